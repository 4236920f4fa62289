"""The default (SQLite) Dagster instance, made fit for partitioned runs.

A run over a range of days records two events per day and asset (planned, materialized), each in
its own SQLite transaction; with SQLite's default fsync on every commit, a 60-day run of the 21
daily assets spent more time in fsync than in dbt. The SQLite files under DAGSTER_HOME are opened
with `synchronous=OFF`: a killed process loses nothing (the OS has the writes), only a power cut or
kernel crash could lose the last events. Production instances use PostgreSQL
(orchestration/instance/dagster.postgres.yaml), which this does not touch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import sqlalchemy
from dagster import DagsterEventType, EventLogEntry
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME
from dagster._core.storage.sqlalchemy_compat import db_result
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy.pool import QueuePool


@functools.lru_cache(maxsize=256)
def _under(path: str, home: str) -> bool:
    """Whether the file `path` lies under the folder `home` (both resolved; asked on every SQLite connect)."""
    return Path(path).resolve().is_relative_to(Path(home).resolve())


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
def _sqlite_without_fsync(dbapi_connection, _record) -> None:
    home = os.environ.get("DAGSTER_HOME")
    if not home or not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cur = dbapi_connection.cursor()
    try:
        files = [row[2] for row in cur.execute("PRAGMA database_list").fetchall()]
        if any(f and _under(f, home) for f in files):
            cur.execute("PRAGMA synchronous=OFF")
    finally:
        cur.close()


def bounded_bookkeeping() -> None:
    """A run over a range of days records one "planned" event per asset, not one per asset and day (22
    daily assets over a year were 8,000 SQLite writes before the first step; about a fifth of a small
    city's run). Dagster's own switch, set for this process and every process it starts (`citylake dev`'s
    webserver and daemon create the UI's runs). Its cost: when such a run fails, its days keep the state
    they had in the UI's partition bar instead of turning red; the run itself shows as failed. A city
    that wants the red days sets DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=false."""
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    # and its materializations, one per asset and day, stored a batch at a time (faster_sqlite_event_log below;
    # PostgreSQL's storage batches them too): Dagster's own switch, the batch size
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    faster_sqlite_event_log()


def _store_event_batch(self: SqliteEventLogStorage, events: Sequence[EventLogEntry]) -> None:
    """A batch of asset events in two SQLite transactions instead of one connection pair per event (the
    same rows as `store_event` writes: each event in the run shard and in the index, their tags, and the
    asset's latest-materialization entry from the batch's last event, as PostgreSQL's storage does)."""
    events = list(events)
    kinds = {e.dagster_event_type for e in events}
    if (
        len(events) < 2
        or not all(e.is_dagster_event for e in events)
        or len(kinds) != 1
        or not kinds <= {DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_OBSERVATION}
        or len({e.run_id for e in events}) != 1
    ):
        for event in events:
            self.store_event(event)
        return
    statements = [self.prepare_insert_event(e) for e in events]
    with self.run_connection(events[0].run_id) as conn:
        for statement in statements:
            conn.execute(statement)
    with self.index_transaction() as conn:
        ids = []
        for statement in statements:
            with db_result(conn, statement) as result:
                ids.append(result.inserted_primary_key[0])
        if any(i is None for i in ids):
            raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
        self._store_asset_event_tags(conn, events, ids)
        self._store_asset_event(conn, events[-1], ids[-1])


#: engines kept per SQLite file (the index and the latest runs' shards)
_ENGINES_KEPT = 32
_ENGINES_LOCK = threading.Lock()


def _engine(self: SqliteEventLogStorage, shard: str) -> sqlalchemy.Engine:
    """The storage's engine for one SQLite file, made once: Dagster made (and disposed) an engine for every
    connection, and its first connect initializes the dialect again, which was most of an event's cost.

    Its pool keeps up to two connections to the file open between uses (SQLAlchemy's QueuePool, its default
    for a SQLite file; two because an event's tag check runs inside its transaction; more are opened while
    threads need them, and closed when given back): opening the file for every event (Dagster's NullPool)
    cost ~1 s of CPU in a small city's run. A kept connection holds no lock between uses: every use is a
    transaction, committed or rolled back when the connection goes back to the pool, so other processes
    (the daemon, the webserver, other runs) write as before, waiting up to SQLite's busy timeout for a
    lock. The storage's wipe and dispose close the kept connections (`_forget_engines`)."""
    with _ENGINES_LOCK:
        engines = self.__dict__.setdefault("_citylake_engines", OrderedDict())
        engine = engines.get(shard)
        if engine is None:
            engine = sqlalchemy.create_engine(
                self.conn_string_for_shard(shard),
                poolclass=QueuePool,
                pool_size=2,
                max_overflow=-1,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            )
            engines[shard] = engine
            while len(engines) > _ENGINES_KEPT:
                engines.popitem(last=False)[1].dispose()
        else:
            engines.move_to_end(shard)
        return engine


def _forget_engines(self: SqliteEventLogStorage) -> None:
    """Close the kept connections and forget the engines (the next use opens the files again)."""
    with _ENGINES_LOCK:
        engines = self.__dict__.pop("_citylake_engines", None) or {}
        for engine in engines.values():
            engine.dispose()


@contextlib.contextmanager
def _connect(self: SqliteEventLogStorage, shard: str) -> Iterator[sqlalchemy.Connection]:
    """SqliteEventLogStorage._connect (a transaction on one SQLite file, under the storage's lock), on the
    file's kept engine."""
    with self._db_lock:
        engine = _engine(self, shard)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        with engine.connect() as conn, conn.begin():
            yield conn


def _has_table(self: SqliteEventLogStorage, table_name: str) -> bool:
    """SqliteEventLogStorage.has_table (asked for every asset event's tags), on the index's kept engine."""
    engine = _engine(self, INDEX_SHARD_NAME)
    with engine.connect() as conn:
        return bool(engine.dialect.has_table(conn, table_name))


def _wipe(self: SqliteEventLogStorage) -> None:
    """SqliteEventLogStorage.wipe (which deletes the runs' files), closing the kept connections: one kept
    to a deleted file would hold its disk space for as long as the process lives."""
    _forget_engines(self)
    STOCK["wipe"](self)


def _dispose(self: SqliteEventLogStorage) -> None:
    """SqliteEventLogStorage.dispose (at the instance's end), closing the kept connections too."""
    _forget_engines(self)
    STOCK["dispose"](self)


#: Dagster's own methods, as imported (tests/test_instance_storage.py compares both)
STOCK = {
    name: SqliteEventLogStorage.__dict__.get(name)
    for name in ("_connect", "has_table", "store_event_batch", "wipe", "dispose")
}


def faster_sqlite_event_log() -> None:
    """Dagster's SQLite event log, with two costs of each event taken out, in this process:

    - a batch write, as Dagster's PostgreSQL storage has. A run over a range of days records one
      materialization per day and asset (Dagster keeps partition status per event): a year of 22 daily
      assets is 8,000 events, which the SQLite storage stored one at a time (about 3 s an asset, a
      quarter of a full rebuild at scale 10). Dagster hands such a run's events to `store_event_batch`
      when DAGSTER_EVENT_BATCH_SIZE is set; its SQLite class inherits the base's loop, replaced here;
    - an engine kept per SQLite file, with a connection kept open, instead of one made, initialized and
      disposed per connection (and per table check), for every other event (steps, checks, logs).

    Only Dagster's own methods are replaced (never a storage that has its own).
    tests/test_instance_storage.py checks that an instance records the same partitions, events and
    latest materialization with and without."""
    if STOCK["store_event_batch"] is None:
        SqliteEventLogStorage.store_event_batch = _store_event_batch  # type: ignore[method-assign]
    if SqliteEventLogStorage.__dict__.get("_connect") is STOCK["_connect"]:
        SqliteEventLogStorage._connect = _connect  # type: ignore[method-assign]
    if SqliteEventLogStorage.__dict__.get("has_table") is STOCK["has_table"]:
        SqliteEventLogStorage.has_table = _has_table  # type: ignore[method-assign]
    if SqliteEventLogStorage.__dict__.get("wipe") is STOCK["wipe"]:
        SqliteEventLogStorage.wipe = _wipe  # type: ignore[method-assign]
    if SqliteEventLogStorage.__dict__.get("dispose") is STOCK["dispose"]:
        SqliteEventLogStorage.dispose = _dispose  # type: ignore[method-assign]
