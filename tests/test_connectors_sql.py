"""SQL sources against the real PostgreSQL and MariaDB on this machine: full and
incremental loads in batches, upserts of changed rows, and no-op reruns (no new Delta version)."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.connectors_support import (
    bronze_rows,
    mysql_table,
    one_source,
    postgres_table,
    quarantine_rows,
    run,
    version,
)

T0 = dt.datetime(2025, 1, 1, 8, 0)


@pytest.fixture
def pg(monkeypatch):
    """A fresh PostgreSQL table name (dropped after); skips when the server is not reachable."""
    yield from postgres_table(monkeypatch)


@pytest.fixture
def mysql(monkeypatch):
    yield from mysql_table(monkeypatch)


def _sql(conn, statement: str, rows: list[tuple] = ()) -> None:
    cur = conn.cursor()
    if rows:
        cur.executemany(statement, rows)
    else:
        cur.execute(statement)


def _rides(n: int, start: int = 0, at: dt.datetime = T0) -> list[tuple]:
    return [(i, f"stop-{i % 7}", i * 10, at + dt.timedelta(minutes=i)) for i in range(start, start + n)]


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_full_incremental_upsert_and_noop_rerun(kind, request, tmp_path):
    conn, table = request.getfixturevalue("pg" if kind == "postgres" else "mysql")
    marker = "%s"
    _sql(conn, f"create table {table} (id integer primary key, stop text, boardings integer, updated_at timestamp)")
    _sql(conn, f"insert into {table} values ({marker}, {marker}, {marker}, {marker})", _rides(25))
    dsn = "${TEST_PG_DSN}" if kind == "postgres" else "${TEST_MYSQL_DSN}"
    spec = {"kind": kind, "dsn": dsn, "table": table, "primary_key": ["id"], "cursor": "updated_at", "batch_rows": 10}
    cfg, src = one_source(tmp_path, "transport", "rides", spec)

    first = run(cfg, src)
    assert (first.rows_read, first.rows_written, first.row_count) == (25, 25, 25)
    rows = bronze_rows(cfg, src)
    assert [r["boardings"] for r in rows] == [i * 10 for i in range(25)]
    assert {r["_batch"] for r in rows} == {"run-1"} and all(r["_ingested_at"] for r in rows)
    v1 = version(cfg, src)

    # nothing new: only the boundary row is read again, and it equals bronze, so no Delta version
    again = run(cfg, src, "run-2")
    assert again.rows_read == 1 and again.rows_written == 0 and version(cfg, src) == v1

    # 5 new rows and 2 changed rows (their cursor moves past the stored one)
    later = T0 + dt.timedelta(days=1)
    _sql(conn, f"insert into {table} values ({marker}, {marker}, {marker}, {marker})", _rides(5, 25, later))
    _sql(conn, f"update {table} set boardings = 999, updated_at = '{later:%Y-%m-%d %H:%M:%S}' where id in (3, 4)")
    third = run(cfg, src, "run-3")
    assert third.cursor_before.replace(tzinfo=None) == T0 + dt.timedelta(minutes=24)
    assert third.rows_written == 7 and third.row_count == 30
    rows = {r["id"]: r for r in bronze_rows(cfg, src)}
    assert rows[3]["boardings"] == rows[4]["boardings"] == 999 and rows[3]["_batch"] == "run-3"
    assert rows[5]["boardings"] == 50 and rows[5]["_batch"] == "run-1"
    assert len(rows) == 30 and quarantine_rows(cfg, src) == []
