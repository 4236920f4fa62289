"""The gates' DuckDB execution gives GX's pandas verdicts and counts, on every suite of the reference city.

Every bronze suite (cities/riverton/expectations/ plus what city.yaml adds: keys, freshness, volume)
and every model suite (expectations/) runs twice over the same rows of the small reference city's lake
and warehouse: through GX's pandas engine (`validate_batches`, what the gates ran before) and compiled
to DuckDB (`validate_relation`, what they run now). Each runs on the clean table and on a copy with
deliberately failing rows added (nulls, impossible numbers, unknown codes, repeated keys); both must
give the same verdict, element, missing and unexpected counts and observed minima / maxima for every
expectation, and the failing copies must fail.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from orchestration.config import load_config
from orchestration.lake import bronze_uri, open_table
from orchestration.quality import (
    AGE_COLUMN,
    CHUNK_ROWS,
    EXPECTATIONS_DIR,
    SuiteOutcome,
    _failing_rows_duckdb,
    _failing_rows_gx,
    age_sql,
    bronze_suite,
    fill,
    quote,
    split_rows,
    validate_batches,
    validate_relation,
    with_age,
)
from tests.conftest import CityRun, citylake, write_city_config

#: copies of up to this many rows per table are spoiled and appended
BAD_ROWS = 60
#: rows of the table kept beside them
KEPT = 240
_serial = itertools.count()
SMALL = {"scale": 0.3, "days": 40, "seed": 5}


@pytest.fixture(scope="module")
def small_city(tmp_path_factory: pytest.TempPathFactory) -> CityRun:
    """A small reference city run once (without `partitions:`: the daily models carry partition_date
    all the same, and the run skips the per-day bookkeeping)."""
    from orchestration.reference_city import generate

    root = tmp_path_factory.mktemp("gates_duckdb")
    generate(root / "riverton", start=dt.date(2025, 3, 1), **SMALL)
    config = write_city_config(root, root / "riverton", root / "lake", partitioned=False)
    run = CityRun(root, config, root / "riverton", root / "lake", root / "state")
    citylake("run", config=config, timeout=1800)
    return run


def spoiled(con: duckdb.DuckDBPyConnection, relation: str) -> str:
    """A table registered on `con`: KEPT rows of `relation` plus BAD_ROWS of them spoiled column by column
    (every third value null, every third number negative and huge, every third text unknown; the rest
    unchanged, so keys repeat): a fifth of its rows bad, beyond any suite's `mostly`. Held as one Arrow
    table so that both engines read the same rows."""
    described = con.execute(f"describe select * from {relation}").fetchall()
    cols = []
    for name, typ, *_ in described:
        c, kind = quote(name), str(typ).upper()
        if name.startswith("_"):
            cols.append(f"{c}")  # metadata kept: the load's `_batch` stays the load's
        elif kind in ("DOUBLE", "FLOAT", "BIGINT", "INTEGER", "HUGEINT", "SMALLINT") or kind.startswith("DECIMAL"):
            cols.append(f"case i % 3 when 0 then null when 1 then -1000000 - {c} else {c} end as {c}")
        elif kind == "VARCHAR":
            cols.append(f"case i % 3 when 0 then null when 1 then 'bad ' || i else {c} end as {c}")
        else:
            cols.append(f"case i % 3 when 0 then null else {c} end as {c}")
    kept = con.sql(f"select * from {relation} limit {KEPT}").to_arrow_table()
    con.register("kept", kept)
    bad = con.sql(f"select {', '.join(cols)} from (select *, row_number() over () as i from kept limit {BAD_ROWS})")
    table = pa.concat_tables([kept, bad.to_arrow_table().cast(kept.schema)]).combine_chunks()
    con.unregister("kept")
    name = f"spoiled_{next(_serial)}"
    con.register(name, table)
    return name


def pandas_path(con: duckdb.DuckDBPyConnection, suite: dict, relation: str, fresh: str | None) -> SuiteOutcome:
    batches = con.sql(f"select * from {relation}").to_arrow_reader(CHUNK_ROWS)
    if fresh:
        batches = with_age(batches, fresh, pd.Timestamp(dt.datetime.now(dt.UTC)))
    return validate_batches(suite, batches)


def duckdb_path(con: duckdb.DuckDBPyConnection, suite: dict, relation: str, fresh: str | None) -> SuiteOutcome:
    if fresh:
        relation = f"(select *, {age_sql(fresh)} as {AGE_COLUMN} from {relation})"
    return validate_relation(suite, con, relation)


def assert_same(a: SuiteOutcome, b: SuiteOutcome, where: str) -> None:
    assert a.rows == b.rows, where
    assert [e.type for e in a.expectations] == [e.type for e in b.expectations], where
    for x, y in zip(a.expectations, b.expectations, strict=True):
        what = f"{where}: {x.type} {json.dumps(x.kwargs, default=str)[:200]}"
        assert bool(x.success) == bool(y.success), what
        assert (x.is_map, x.element_count, x.missing_count, x.unexpected_count) == (
            y.is_map,
            y.element_count,
            y.missing_count,
            y.unexpected_count,
        ), what
        if isinstance(x.observed_value, float | int) and not isinstance(x.observed_value, bool):
            tolerance = 0.1 if x.kwargs.get("column") == AGE_COLUMN else 1e-9  # ages: seconds apart
            assert math.isclose(float(x.observed_value), float(y.observed_value), rel_tol=1e-9, abs_tol=tolerance), what
        elif x.type != "expect_column_to_exist":
            assert x.observed_value == y.observed_value, what
    assert a.success == b.success, where


def both_paths(con, suite: dict, relation: str, fresh: str | None, where: str) -> tuple[bool, bool]:
    clean_a, clean_b = pandas_path(con, suite, relation, fresh), duckdb_path(con, suite, relation, fresh)
    assert_same(clean_a, clean_b, where)
    bad = spoiled(con, relation)
    bad_a, bad_b = pandas_path(con, suite, bad, fresh), duckdb_path(con, suite, bad, fresh)
    assert_same(bad_a, bad_b, f"{where} (spoiled)")
    assert bad_b.rows == min(clean_b.rows, KEPT) + min(clean_b.rows, BAD_ROWS)
    return clean_b.success, bad_b.success


def test_bronze_suites_same_verdicts_and_counts(small_city: CityRun) -> None:
    cfg = load_config(small_city.config)
    codes = district_codes(small_city)
    suites = 0
    for source in cfg.sources:
        table = open_table(bronze_uri(cfg, source.agency, source.name))
        if table is None:
            continue
        suite = fill(bronze_suite(source), codes, source.key)
        suite["expectations"].append({"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}})
        fresh = (source.get("freshness") or {}).get("column")
        with duckdb.connect() as con:
            con.execute("set TimeZone = 'UTC'")
            con.register("bronze", table.to_pyarrow_dataset())
            clean, bad = both_paths(con, suite, "bronze", fresh, source.key)
            # the load of one run only: what the bronze gate validates
            batch = con.execute("select max(_batch) from bronze").fetchall()[0][0]
            both_paths(con, suite, f"(select * from bronze where _batch = '{batch}')", fresh, f"{source.key} load")
            # the row gate of ingestion: the same rows sent to quarantine, for the same reason
            landing = con.sql(f"select * from {spoiled(con, 'bronze')}").to_arrow_table()
            row_level = [
                e
                for e in suite["expectations"]
                if e["type"].startswith("expect_column_values_") and e["kwargs"]["column"] in landing.column_names
            ]
            in_duckdb = _failing_rows_duckdb(row_level, landing)
            assert in_duckdb and in_duckdb == _failing_rows_gx(suite["name"], row_level, landing), source.key
            assert split_rows(suite, landing)[0].num_rows == landing.num_rows - len(in_duckdb)
        assert clean and not bad, f"{source.key}: the clean table passes, the spoiled copy fails"
        suites += 1
    assert suites == len(cfg.sources)


def test_model_suites_same_verdicts_and_counts(small_city: CityRun) -> None:
    codes = district_codes(small_city)
    paths = sorted(EXPECTATIONS_DIR.glob("*.json"))
    assert len(paths) >= 20
    with duckdb.connect(str(small_city.warehouse), read_only=True) as con:
        for path in paths:
            suite = fill(json.loads(path.read_text()), codes, path.name)
            suite["expectations"].append({"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}})
            model = quote(path.stem.split(".", 1)[1])
            clean, bad = both_paths(con, suite, model, None, path.name)
            assert clean and not bad, f"{path.name}: the clean table passes, the spoiled copy fails"
            names = [r[0] for r in con.execute(f"describe {model}").fetchall()]
            if "partition_date" in names:  # a window of days: what a daily model's gate validates
                lo, hi = con.execute(f"select min(partition_date), max(partition_date) from {model}").fetchall()[0]
                mid = lo + (hi - lo) / 2
                window = f"(select * from {model} where partition_date between '{mid}' and '{hi}')"
                both_paths(con, suite, window, None, f"{path.name} window")


def district_codes(run: CityRun) -> dict[str, list[str]]:
    with duckdb.connect(str(run.warehouse), read_only=True) as con:
        codes = sorted(r[0] for r in con.execute("select code from city_districts").fetchall())
    return {"district_codes": codes, "area_ids": [*codes, "CITY"], "district_codes_unassigned": [*codes, "UNASSIGNED"]}


@pytest.mark.parametrize("holder", ["dbt writing", "a gate reading"])
def test_a_warehouse_connection_waits_for_another_process_holding_the_file(tmp_path: Path, holder: str) -> None:
    """DuckDB: one writer process, and no reader while it writes; a writer needs every reader gone. In the
    UI's multiprocess runs a model gate may start while dbt (another process) writes the warehouse, and the
    bronze views (written before a dbt build) may find another run's gate reading it: each waits for the
    file instead of failing the step."""
    import subprocess
    import sys
    import time

    from orchestration.quality import warehouse_when_free

    db = tmp_path / "warehouse.duckdb"
    duckdb.connect(str(db)).execute("create table t as select 42 as v").close()
    reading = holder == "a gate reading"
    held = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'ro'); "
            "c.execute('select * from t').fetchall(); print('holding', flush=True); time.sleep(3)",
            str(db),
            "ro" if reading else "rw",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert held.stdout.readline().strip() == "holding"
    started = time.monotonic()
    # the gate reads while dbt writes; the views write while a gate reads
    with pytest.raises(duckdb.IOException, match="(?i)lock"):
        warehouse_when_free(db, read_only=not reading, wait_s=0)
    con = warehouse_when_free(db, read_only=not reading, wait_s=60)
    try:
        assert con.execute("select v from t").fetchall() == [(42,)]
    finally:
        con.close()
    assert time.monotonic() - started > 1 and held.wait(10) == 0


@pytest.mark.parametrize("seed", [5, 23])
def test_a_load_gate_reads_the_loads_files_and_counts_what_delta_rs_reads(tmp_path: Path, seed: int) -> None:
    """`validate_load` on a local lake reads the load's rows through DuckDB's Parquet reader, from the files
    the Delta log's `_batch` statistics say may hold them (`lake.files_with`), instead of materializing them
    through delta-rs (`lake.rows_where`, still what a lake on object storage uses). Random loads (appends of
    one to three files each, then an upsert rewriting rows of the third load) must give every expectation
    the counts the same suite gives on delta-rs's rows of that load, count exactly the load's rows, and
    leave out files of other loads; a run that wrote nothing reads no file."""
    import random

    from orchestration import lake, quality

    rng = random.Random(seed)
    uri = str(tmp_path / "bronze" / "agency" / "feed")
    batches = [f"run-{seed}-{i}-{rng.randrange(10**9)}" for i in range(4)]

    def rows(batch: str, keys: range) -> pa.Table:
        return pa.table(
            {
                "id": [str(k) for k in keys],
                "value": pa.array(
                    [None if rng.random() < 0.1 else rng.choice([-5, 3, 7, 400]) for _ in keys], pa.int64()
                ),
                "_batch": [batch] * len(keys),
                "_ingested_at": pa.array([dt.datetime(2025, 1, 1, tzinfo=dt.UTC)] * len(keys)),
            }
        )

    start = 0
    third = 0
    for b in batches[:3]:
        third = start
        for _ in range(rng.randint(1, 3)):
            n = rng.randint(5, 60)
            lake.append(uri, rows(b, range(start, start + n)))
            start += n
    # the last load rewrites rows of the third (and a batch with no rows left reads no file)
    rewritten = range(rng.randrange(third, start), start)
    lake.upsert(uri, rows(batches[3], rewritten), keys=["id"], compare=["value", "_batch"])
    table = lake.open_table(uri)
    loaded = table.to_pyarrow_dataset().to_table(columns=["_batch"]).column("_batch").to_pylist()
    suite = {
        "name": "feed",
        "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "value"}},
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "value", "min_value": 0}},
            {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}},
        ],
    }
    fewer = 0
    for batch in batches:
        files = lake.files_with(table, "_batch", batch)
        assert set(files) <= set(table.file_uris()) and (files or batch not in loaded)
        fewer += len(files) < len(table.file_uris())
        gate = quality.validate_load(suite, uri, batch)
        with duckdb.connect() as con:  # the same suite on delta-rs's rows of the load
            con.register("load", lake.rows_where(table, "_batch", batch))
            read = validate_relation(suite, con, "load")
        figures = [(e.element_count, e.missing_count, e.unexpected_count, e.success) for e in gate.expectations]
        assert figures == [(e.element_count, e.missing_count, e.unexpected_count, e.success) for e in read.expectations]
        assert gate.expectations[0].element_count == loaded.count(batch), batch
    assert lake.files_with(table, "_batch", "run-that-wrote-nothing") == []
    assert quality.validate_load(suite, uri, "run-that-wrote-nothing").expectations[0].element_count == 0
    assert fewer and batches[-1] in loaded, "the statistics left out some files"
