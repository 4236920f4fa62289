"""Bronze rules on real sources: schema drift (new, missing and uncastable columns), all-null
batches, and a crash right after a Delta commit (no loss, no duplicate on the rerun)."""

from __future__ import annotations

import sqlite3

import pytest

from orchestration import lake
from tests.connectors_support import bronze_rows, one_source, postgres_table, quarantine_rows, run
from tests.test_connectors_sql import _rides, _sql


@pytest.fixture
def pg(monkeypatch):
    """A fresh PostgreSQL table name (dropped after); skips when the server is not reachable."""
    yield from postgres_table(monkeypatch)


def test_postgres_type_drift_new_missing_and_uncastable_columns(pg, tmp_path):
    conn, table = pg
    _sql(conn, f"create table {table} (id integer primary key, reading integer, note text, updated_at timestamp)")
    _sql(conn, f"insert into {table} values (1, 10, 'a', '2025-01-01 00:00'), (2, null, null, '2025-01-01 00:01')")
    spec = {"kind": "postgres", "dsn": "${TEST_PG_DSN}", "table": table, "primary_key": ["id"], "cursor": "updated_at"}
    cfg, src = one_source(tmp_path, "env", "readings", spec)
    run(cfg, src)
    schema = lake.schema(lake.bronze_uri(cfg, "env", "readings"))
    assert str(schema.field("reading").type) == "int64"

    # the agency changes reading to text, drops `note` and adds `unit`
    _sql(conn, f"alter table {table} alter column reading type text, drop column note, add column unit text")
    _sql(
        conn,
        f"insert into {table} values (3, '30', '2025-01-02 00:00', 'ppb'), (4, 'n/a', '2025-01-02 00:01', 'ppb'),"
        f" (5, null, '2025-01-02 00:02', null)",
    )
    result = run(cfg, src, "run-2")
    assert result.columns_added == ["unit"] and result.columns_missing == ["note"]
    assert result.quarantined == 1 and result.row_count == 4
    rows = {r["id"]: r for r in bronze_rows(cfg, src)}
    assert rows[3]["reading"] == 30 and rows[3]["unit"] == "ppb" and rows[3]["note"] is None
    assert rows[1]["note"] == "a" and rows[1]["unit"] is None and rows[5]["reading"] is None
    (q,) = quarantine_rows(cfg, src)
    assert q["record_key"] == "4" and "column reading: value 'n/a'" in q["reason"] and "int64" in q["reason"]
    assert str(lake.schema(lake.bronze_uri(cfg, "env", "readings")).field("reading").type) == "int64"


def test_all_null_batch_takes_the_bronze_type(tmp_path):
    db = tmp_path / "src.sqlite"
    con = sqlite3.connect(db)
    con.execute("create table t (id integer primary key, v real, updated_at text)")
    con.executemany("insert into t values (?, ?, ?)", [(1, 1.5, "2025-01-01"), (2, 2.5, "2025-01-02")])
    con.commit()
    spec = {"kind": "sqlite", "path": str(db), "table": "t", "primary_key": ["id"], "cursor": "updated_at"}
    cfg, src = one_source(tmp_path, "a", "s", spec)
    run(cfg, src)
    # a batch whose `v` is all null infers Arrow's null type: it must land as double, not break the write
    con.executemany("insert into t values (?, ?, ?)", [(3, None, "2025-01-03"), (4, None, "2025-01-04")])
    con.commit()
    result = run(cfg, src, "run-2")
    assert result.rows_written == 2 and result.row_count == 4 and result.quarantined == 0
    assert str(lake.schema(lake.bronze_uri(cfg, "a", "s")).field("v").type) == "double"
    assert [r["v"] for r in bronze_rows(cfg, src)] == [1.5, 2.5, None, None]


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


def test_crash_after_delta_commit_neither_loses_nor_repeats_rows(pg, tmp_path, monkeypatch):
    conn, table = pg
    _sql(conn, f"create table {table} (id integer primary key, stop text, boardings integer, updated_at timestamp)")
    _sql(conn, f"insert into {table} values (%s, %s, %s, %s)", _rides(30))
    spec = {
        "kind": "postgres",
        "dsn": "${TEST_PG_DSN}",
        "table": table,
        "primary_key": ["id"],
        "cursor": "updated_at",
        "batch_rows": 10,
    }
    cfg, src = one_source(tmp_path, "transport", "rides", spec)
    real_upsert, calls = lake.upsert, []

    def upsert_then_die(*args, **kwargs):
        n = real_upsert(*args, **kwargs)
        calls.append(n)
        if len(calls) == 2:
            raise Crash("killed right after the second batch's Delta commit")
        return n

    monkeypatch.setattr(lake, "upsert", upsert_then_die)
    with pytest.raises(Crash):
        run(cfg, src, "crashed")
    assert calls == [10, 10] and len(bronze_rows(cfg, src)) == 20
    monkeypatch.setattr(lake, "upsert", real_upsert)

    result = run(cfg, src, "rerun")
    rows = bronze_rows(cfg, src)
    # the cursor was bronze's own max (id 19): rows 19..29 read again, 19 unchanged, 20..29 added
    assert result.rows_read == 11 and result.rows_written == 10
    assert [r["id"] for r in rows] == list(range(30)) and len({r["id"] for r in rows}) == 30
    assert {r["_batch"] for r in rows if r["id"] >= 20} == {"rerun"}


@pytest.mark.parametrize("options", [None, "sep=;"])
def test_loaded_file_pairs_read_by_duckdb_equal_the_arrow_reading(tmp_path, options):
    """A local table's (file, checksum) pairs are found by one DuckDB DISTINCT over its Parquet files;
    an object-storage one's by delta-rs's Arrow dataset. Both must give the same pairs, with quarantine's
    rules: only files finished there (`_file_done`), read with the current options (or before options
    were kept: files written without the column, or a null). The local table is read as such, and
    through a file:// uri, which takes the Arrow path."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from orchestration.ingest import _file_pairs

    uri = tmp_path / "quarantine"
    older = pa.table(
        {
            "_source_file": ["a.csv", "a.csv", "b.csv", None, ""],
            "_source_checksum": ["1", "1", "2", "3", "4"],
            "_file_done": [True, True, None, True, True],
        }
    )
    write_deltalake(str(uri), older)
    newer = pa.table(
        {
            "_source_file": ["c.csv", "d.csv", "e.csv", "f.csv", "a.csv"],
            "_source_checksum": ["5", "6", "7", "8", "9"],
            "_file_done": [True, True, True, False, True],
            "_read_options": ["sep=;", "sep=,", None, "sep=;", "sep=;"],
        }
    )
    write_deltalake(str(uri), newer, mode="append", schema_mode="merge")
    local, arrow = _file_pairs(str(uri), options), _file_pairs(f"file://{uri}", options)
    expected = {("a.csv", "1"), ("c.csv", "5"), ("e.csv", "7"), ("a.csv", "9")} | (
        {("d.csv", "6")} if options is None else set()
    )
    assert local == arrow == expected
    bronze = tmp_path / "bronze"  # no _file_done: every pair counts
    write_deltalake(str(bronze), older.drop(["_file_done"]))
    assert _file_pairs(str(bronze)) == _file_pairs(f"file://{bronze}") == {("a.csv", "1"), ("b.csv", "2")}
