"""Faults from outside citylake, done for real: another process writing the bronze table a `citylake
run` is loading, and the agency's database server dropping the connection in the middle of a read.

Related guarantees proved elsewhere: two `citylake run` at once
(tests/test_operations.py::test_two_runs_started_at_once_both_finish_correctly), an analyst holding
the catalog during a run
(tests/test_publication.py::test_an_analyst_holding_the_catalog_open_does_not_block_a_pipeline_run).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest
from deltalake import DeltaTable

from orchestration import lake
from orchestration.ingest import SourceError
from tests.conftest import citylake
from tests.connectors_support import PG_DSN, bronze_rows, city_yaml, mysql_table, one_source, postgres_table, run
from tests.test_publication import python

T0 = dt.datetime(2025, 1, 1)
OUTSIDE_ROWS = 8

# appends one row of its own to the bronze table each time citylake commits a batch to it, so that
# the two writers' commits interleave; each append is tagged writer=outside in the Delta commit
OUTSIDE_WRITER = """
import json, sys, time
from pathlib import Path
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake

uri, n = sys.argv[1], int(sys.argv[2])
log = Path(uri) / "_delta_log"
seen = -1
deadline = time.monotonic() + 300
for k in range(n):
    while True:
        versions = [int(p.stem) for p in log.glob("*.json")] if log.is_dir() else []
        if versions and max(versions) > seen:
            break
        assert time.monotonic() < deadline, "citylake never committed"
        time.sleep(0.005)
    table = DeltaTable(uri)
    seen = table.version() + 1  # the version this append takes, at the earliest
    schema = pa.schema(table.schema().to_arrow())
    row = {"id": 100_000 + k, "stop": "outside", "boardings": k, "updated_at": "2024-12-31T00:00:00",
           "_batch": "outside-writer"}
    data = pa.table({f.name: pa.array([row.get(f.name)], f.type) for f in schema})
    write_deltalake(uri, data, mode="append", commit_properties=CommitProperties(custom_metadata={"writer": "outside"}))
print(json.dumps({"appended": n}), flush=True)
"""


def _rides_db(path: Path, n: int) -> None:
    con = sqlite3.connect(path)
    con.execute("create table rides (id integer primary key, stop text, boardings integer, updated_at text)")
    con.executemany(
        "insert into rides values (?, ?, ?, ?)",
        [(i, f"stop-{i % 7}", i, (T0 + dt.timedelta(minutes=i)).isoformat()) for i in range(n)],
    )
    con.commit()
    con.close()


def test_an_outside_writer_appending_during_a_run_loses_nothing(tmp_path: Path) -> None:
    """delta-rs refuses citylake's merge when another writer committed first ("a concurrent transaction
    added new data"); citylake redoes the merge on the new version, so both writers' rows land."""
    _rides_db(tmp_path / "rides.sqlite", 600)
    spec = {
        "kind": "sqlite",
        "path": str(tmp_path / "rides.sqlite"),
        "table": "rides",
        "primary_key": ["id"],
        "cursor": "updated_at",
        "batch_rows": 20,
    }
    config = city_yaml(tmp_path, {"transport": {"rides": spec}})
    uri = str(tmp_path / "lake" / "bronze" / "transport" / "rides")
    writer = python(OUTSIDE_WRITER, uri, str(OUTSIDE_ROWS))
    proc = citylake("run", "--select", "bronze/transport/rides", config=config, check=False)
    out, err = writer.communicate(timeout=300)
    assert writer.returncode == 0 and json.loads(out) == {"appended": OUTSIDE_ROWS}, err
    if proc.returncode != 0:
        # every redo lost the race again: the load fails, saying so, and the rerun completes it
        assert "another writer committed to this Delta table" in proc.stderr, proc.stderr[-3000:]
        citylake("run", "--select", "bronze/transport/rides", config=config)

    table = DeltaTable(uri)
    ids = table.to_pyarrow_table(columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == list(range(600)) + [100_000 + k for k in range(OUTSIDE_ROWS)]
    history = sorted(table.history(), key=lambda c: c["version"])
    outside = [c["version"] for c in history if c.get("writer") == "outside"]
    merges = [c["version"] for c in history if c["operation"] == "MERGE"]
    assert len(outside) == OUTSIDE_ROWS and len(merges) == 600 // 20 - 1
    # the commits interleaved: citylake merged both before and after the outside appends
    assert min(merges) < min(outside) and max(outside) < max(merges)


@pytest.fixture
def pg(monkeypatch):
    yield from postgres_table(monkeypatch)


def _when(condition, action) -> threading.Thread:
    """A thread that runs `action()` once `condition()` holds (polled every 10 ms, for at most 2 min)."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if condition():
                action()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _kill_when_committed(uri: str, kill) -> threading.Thread:
    """Run `kill()` once the bronze table at uri has its second commit (two whole batches)."""

    def committed() -> bool:
        table = lake.open_table(uri)
        return table is not None and table.version() >= 1

    return _when(committed, kill)


def _fetching(conn, app: str) -> bool:
    """Whether the backend of application `app` has started fetching its cursor's rows."""
    row = conn.execute("select query from pg_stat_activity where application_name = %s", [app]).fetchone()
    return row is not None and row[0].lstrip().upper().startswith("FETCH")


@pytest.mark.parametrize("cursor", [True, False], ids=["cursor", "snapshot"])
def test_postgres_connection_terminated_mid_read(pg, tmp_path, monkeypatch, cursor: bool) -> None:
    """The server ends the connection between two batches of a streamed read (pg_terminate_backend)."""
    conn, table = pg
    n = 2000
    conn.execute(f"create table {table} (id integer primary key, stop text, boardings integer, updated_at timestamp)")
    with conn.cursor() as cur:
        cur.executemany(
            f"insert into {table} values (%s, %s, %s, %s)",
            [(i, f"stop-{i % 7}", i, T0 + dt.timedelta(minutes=i)) for i in range(n)],
        )
    # slowed on the server (0.5 ms a row) so that the read lasts long enough to be interrupted: by a view, as
    # a source query may not call pg_sleep() (orchestration/sql_rules.py)
    conn.execute(f"create view {table}_slow as select * from {table} where pg_sleep(0.0005) is not null")
    app = f"citylake_fault_{uuid.uuid4().hex[:8]}"
    # a password in the DSN (trust authentication ignores it): no message may show it
    dsn = PG_DSN.replace("postgres@", "postgres:Pw-s3cret-42@") + f"?application_name={app}"
    monkeypatch.setenv("FAULT_PG_DSN", dsn)
    spec = {
        "kind": "postgres",
        "dsn": "${FAULT_PG_DSN}",
        "table": f"{table}_slow",
        "primary_key": ["id"],
        "batch_rows": 200,
    }
    if cursor:
        spec["cursor"] = "updated_at"
    cfg, src = one_source(tmp_path, "transport", "rides", spec)
    uri = lake.bronze_uri(cfg, "transport", "rides")
    terminated: list[int] = []

    def terminate() -> None:
        terminated.extend(
            r[0]
            for r in conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where application_name = %s", [app]
            ).fetchall()
        )

    if cursor:
        watcher = _kill_when_committed(uri, terminate)
    else:
        # a snapshot commits once, at the end: end the connection once rows are streaming
        watcher = _when(lambda: _fetching(conn, app), terminate)
    with pytest.raises(SourceError) as err:
        run(cfg, src, "interrupted")
    watcher.join(timeout=10)
    message = str(err.value)
    assert terminated == [True], "the read finished before the connection could be ended"
    assert "agencies.transport.rides" in message and "terminat" in message and "Pw-s3cret-42" not in message

    rows = bronze_rows(cfg, src)
    ids = [r["id"] for r in rows]
    if cursor:
        # whole committed batches only, in cursor order: the cursor (bronze's max) is where the read stopped
        assert len(ids) % 200 == 0 and 0 < len(ids) < n and ids == list(range(len(ids)))
    else:
        assert lake.open_table(uri) is None, "a snapshot commits all or nothing"
    monkeypatch.setenv("FAULT_PG_DSN", PG_DSN)
    again = run(cfg, src, "rerun")
    rows = bronze_rows(cfg, src)
    assert [r["id"] for r in rows] == list(range(n)) and again.row_count == n
    # the rerun read from the boundary row on: nothing read twice but that row
    assert again.rows_read == (n - len(ids) + 1 if cursor else n)


@pytest.fixture
def mysql(monkeypatch):
    yield from mysql_table(monkeypatch)


def test_mariadb_connection_killed_mid_read(mysql, tmp_path) -> None:
    """The server kills the connection (KILL CONNECTION) while rows stream to an unbuffered cursor."""
    admin, table = mysql
    n = 20_000
    with admin.cursor() as cur:
        # wide rows: more than the socket buffers hold, so the server is still sending when killed
        cur.execute(f"create table {table} (id integer primary key, pad text, updated_at datetime)")
        cur.executemany(
            f"insert into {table} values (%s, %s, %s)",
            [(i, "x" * 1000, T0 + dt.timedelta(seconds=i)) for i in range(n)],
        )
    spec = {
        "kind": "mysql",
        "dsn": "${TEST_MYSQL_DSN}",
        "table": table,
        "primary_key": ["id"],
        "cursor": "updated_at",
        "batch_rows": 1000,
    }
    cfg, src = one_source(tmp_path, "transport", "rides", spec)
    killed: list[int] = []

    def kill() -> None:
        with admin.cursor() as cur:
            cur.execute(
                "select id from information_schema.processlist where info like %s and id <> connection_id()",
                [f"%{table}%"],
            )
            for (pid,) in cur.fetchall():
                cur.execute(f"kill connection {int(pid)}")
                killed.append(pid)

    watcher = _kill_when_committed(lake.bronze_uri(cfg, "transport", "rides"), kill)
    with pytest.raises(SourceError) as err:
        run(cfg, src, "interrupted")
    watcher.join(timeout=10)
    assert killed and "agencies.transport.rides" in str(err.value) and "Lost connection" in str(err.value)
    ids = [r["id"] for r in bronze_rows(cfg, src)]
    assert len(ids) % 1000 == 0 and 0 < len(ids) < n and ids == list(range(len(ids)))
    again = run(cfg, src, "rerun")
    assert [r["id"] for r in bronze_rows(cfg, src)] == list(range(n)) and again.row_count == n
    assert again.rows_read == n - len(ids) + 1
