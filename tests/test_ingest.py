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
