"""The warehouse's bronze views (orchestration/dbt_build.py, `bronze_views`): what dbt reads of a local
lake is exactly what the Delta table holds, read by delta-rs: every row once, every column of the Delta
schema (a column that arrived later is null in the rows before it), after new files, a changed file, a
refused file and for a source with nothing loaded yet. Random cities: names, columns, files and drift
differ per seed. And the files of one load, committed together, conform to each other as if committed one
by one."""

from __future__ import annotations

import csv
import datetime as dt
import random
import string
from pathlib import Path

import duckdb
import pytest

from orchestration import lake
from orchestration.config import load_config
from orchestration.dbt_build import bronze_views, native_bronze
from orchestration.ingest import ingest
from tests.connectors_support import city_yaml


def _name(rng: random.Random) -> str:
    return rng.choice(string.ascii_lowercase) + "".join(rng.choices(string.ascii_lowercase + "_", k=rng.randint(2, 9)))


def _write(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def _rows(rng: random.Random, columns: list[str], ids: range) -> list[dict]:
    return [
        {c: (str(i) if c == "id" else rng.choice(["", "x y", "12.5", "O'Hare", "ü"])) for c in columns} for i in ids
    ]


def _plain(row) -> str:
    """A row as text, instants in UTC (DuckDB and pyarrow name the UTC zone differently)."""
    return repr(tuple(v.astimezone(dt.UTC).isoformat() if isinstance(v, dt.datetime) else v for v in row))


def _view(cfg, agency: str, name: str) -> list[tuple]:
    with duckdb.connect(str(cfg.state_dir / "warehouse.duckdb"), read_only=True) as con:
        rel = con.execute(f'select * from "bronze_{agency}"."{name}"')
        columns = [d[0] for d in rel.description]
        return columns, sorted(map(_plain, rel.fetchall()))


def _delta(cfg, agency: str, name: str) -> list[tuple]:
    table = lake.read_table(lake.bronze_uri(cfg, agency, name))
    columns = table.column_names
    return columns, sorted(_plain([r[c] for c in columns]) for r in table.to_pylist())


@pytest.mark.parametrize("seed", [5, 23, 71])
def test_the_bronze_views_hold_what_the_delta_tables_hold(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    agency, name, empty = _name(rng), _name(rng), _name(rng) + "_later"
    root = tmp_path / "city"
    (root / "drop").mkdir(parents=True)
    (root / "later").mkdir()
    spec = {"kind": "files", "path": "./drop/*.csv", "format": "csv", "primary_key": ["id"]}
    nothing = {"kind": "files", "path": "./later/*.csv", "format": "csv", "primary_key": ["id"]}
    cfg = load_config(city_yaml(root, {agency: {name: spec, empty: nothing}}))
    assert native_bronze(cfg)
    source, later = cfg.source(f"{agency}/{name}"), cfg.source(f"{agency}/{empty}")
    columns = ["id"] + [_name(rng) + " " + _name(rng) for _ in range(rng.randint(1, 4))]
    files = rng.randint(2, 6)
    for k in range(files):
        _write(
            root / "drop" / f"part-{k}.csv", columns, _rows(rng, columns, range(k * 100, k * 100 + rng.randint(1, 60)))
        )

    def check(batch: str) -> None:
        ingest(cfg, source, batch)
        ingest(cfg, later, batch)
        bronze_views(cfg)
        assert _view(cfg, agency, name) == _delta(cfg, agency, name)
        assert _view(cfg, agency, empty) == _delta(cfg, agency, empty)

    check("run-1")
    assert _view(cfg, agency, empty)[1] == []
    check("run-1b")  # nothing new: each view kept as it was made (its table's Delta version unchanged)
    # the source that had nothing gets its first file (a view made from an earlier version is remade)
    _write(root / "later" / "first.csv", ["id", "note"], [{"id": "1", "note": "n"}])
    # drift: a new file brings a column; a changed file replaces its rows; an unreadable file is refused
    drifted = [*columns, "added " + _name(rng)]
    _write(
        root / "drop" / f"part-{files}.csv", drifted, _rows(rng, drifted, range(10_000, 10_000 + rng.randint(1, 40)))
    )
    _write(root / "drop" / "part-0.csv", columns, _rows(rng, columns, range(0, rng.randint(1, 30))))
    (root / "drop" / "part-1.csv").write_bytes(b"\xff\xfe\x00broken\x00,\n\x00")
    check("run-2")
    view_columns, rows = _view(cfg, agency, name)
    assert drifted[-1] in view_columns and rows
    assert len(_view(cfg, agency, empty)[1]) == 1


def test_a_bronze_table_deleted_and_loaded_again_gets_a_new_view_at_the_same_version(tmp_path: Path) -> None:
    """A source is reloaded by deleting its bronze table (as a later `personal_data.drop` rule asks): loaded again,
    the table may reach the very version its view was made from, and the view must not keep the old files."""
    import shutil

    root = tmp_path / "city"
    (root / "drop").mkdir(parents=True)
    spec = {"kind": "files", "path": "./drop/*.csv", "format": "csv", "primary_key": ["id"]}
    cfg = load_config(city_yaml(root, {"parks": {"counts": spec}}))
    source = cfg.source("parks/counts")
    _write(root / "drop" / "a.csv", ["id", "n"], [{"id": "1", "n": "old"}])
    ingest(cfg, source, "run-1")
    bronze_views(cfg)
    version = lake.open_table(lake.bronze_uri(cfg, "parks", "counts")).version()
    shutil.rmtree(lake.bronze_uri(cfg, "parks", "counts"))
    shutil.rmtree(lake.quarantine_uri(cfg, "parks", "counts"))
    _write(root / "drop" / "a.csv", ["id", "n"], [{"id": "1", "n": "new"}, {"id": "2", "n": "new"}])
    ingest(cfg, source, "run-2")
    assert lake.open_table(lake.bronze_uri(cfg, "parks", "counts")).version() == version
    bronze_views(cfg)
    assert _view(cfg, "parks", "counts") == _delta(cfg, "parks", "counts")
    assert len(_view(cfg, "parks", "counts")[1]) == 2


def test_files_committed_together_conform_to_each_other_as_if_committed_one_by_one(tmp_path: Path) -> None:
    """The files of one load share a Delta commit; a column the first of them brings is typed by it, and a
    later file of the same load whose value cannot take that type sends that row to quarantine, as when
    each file was committed on its own (the load does not fail)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.connectors_support import bronze_rows, one_source, quarantine_rows

    drop = tmp_path / "city" / "drop"
    drop.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2], "v": ["a", "b"]}), drop / "a.parquet")
    cfg, source = one_source(
        tmp_path / "city",
        "water",
        "meters",
        {"kind": "files", "path": "./drop/*.parquet", "format": "parquet", "primary_key": ["id"]},
    )
    ingest(cfg, source, "run-1")
    # two new files in one load, both bringing `note`: an integer in the first, text in the second
    pq.write_table(pa.table({"id": [3, 4], "v": ["c", "d"], "note": [7, 8]}), drop / "b.parquet")
    pq.write_table(pa.table({"id": [5, 6], "v": ["e", "f"], "note": ["x", "9"]}), drop / "c.parquet")
    result = ingest(cfg, source, "run-2")
    assert result.versions_committed == 2  # b and c in one commit, after the schema change adding `note`
    rows = {r["id"]: r.get("note") for r in bronze_rows(cfg, source)}
    assert rows == {1: None, 2: None, 3: 7, 4: 8, 6: 9}
    reasons = [r["reason"] for r in quarantine_rows(cfg, source)]
    assert reasons == ["column note: value 'x' (string) cannot be cast to bronze type int64"], reasons


@pytest.mark.parametrize("budget", ["one per file", "one for all"])
def test_a_loads_files_share_commits_up_to_the_commit_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: str
) -> None:
    """BRONZE_COMMIT_BYTES bounds the rows waiting for a commit: at 1 byte each file is a commit of its own,
    at the default a first load of small files is one commit; the rows are the same either way."""
    from orchestration import ingest as ingest_module
    from tests.connectors_support import bronze_rows, one_source

    rng = random.Random(len(budget))
    drop = tmp_path / "city" / "drop"
    drop.mkdir(parents=True)
    files = rng.randint(3, 9)
    expected = {}
    for k in range(files):
        rows = [{"id": str(k * 100 + i), "v": rng.choice(["a", "b", "c"])} for i in range(rng.randint(1, 20))]
        _write(drop / f"f{k}.csv", ["id", "v"], rows)
        expected.update({r["id"]: r["v"] for r in rows})
    if budget == "one per file":
        monkeypatch.setattr(ingest_module, "BRONZE_COMMIT_BYTES", 1)
    cfg, source = one_source(
        tmp_path / "city",
        "parks",
        "visits",
        {"kind": "files", "path": "./drop/*.csv", "format": "csv", "primary_key": ["id"]},
    )
    result = ingest(cfg, source, "run-1")
    assert result.versions_committed == (files if budget == "one per file" else 1)
    assert {r["id"]: r["v"] for r in bronze_rows(cfg, source)} == expected
