"""The default (SQLite) Dagster instance, made fit for partitioned runs.

A run over a range of days records two events per day and asset (planned, materialized), each in
its own SQLite transaction; with SQLite's default fsync on every commit, a 60-day run of the 21
daily assets spent more time in fsync than in dbt. The SQLite files under DAGSTER_HOME are opened
with `synchronous=OFF`: a killed process loses nothing (the OS has the writes), only a power cut or
kernel crash could lose the last events. Production instances use PostgreSQL
(orchestration/instance/dagster.postgres.yaml), which this does not touch.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy
from dagster import DagsterEventType, EventLogEntry
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.base import EventLogStorage
from dagster._core.storage.sqlalchemy_compat import db_result


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
def _sqlite_without_fsync(dbapi_connection, _record) -> None:
    home = os.environ.get("DAGSTER_HOME")
    if not home or not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cur = dbapi_connection.cursor()
    try:
        files = [row[2] for row in cur.execute("PRAGMA database_list").fetchall()]
        if any(f and Path(f).resolve().is_relative_to(Path(home).resolve()) for f in files):
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
    # and its materializations, one per asset and day, stored a batch at a time (batched_sqlite_events below;
    # PostgreSQL's storage batches them too): Dagster's own switch, the batch size
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    batched_sqlite_events()


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


def batched_sqlite_events() -> None:
    """Dagster's SQLite event log, given the batch write its PostgreSQL storage has. A run over a range of
    days records one materialization per day and asset (Dagster keeps partition status per event): a
    year of 22 daily assets is 8,000 events, and the SQLite storage stored each on its own, opening and
    disposing engines for the run shard, the index shard and a table check: about 3 s an asset, a
    quarter of a full rebuild at scale 10. Dagster hands such a run's events to `store_event_batch` when
    DAGSTER_EVENT_BATCH_SIZE is set; its SQLite class inherits the base's one-at-a-time loop, which this
    replaces in this process (never a storage that has its own). tests/test_instance_storage.py checks
    that an instance records the same partitions, events and latest materialization either way."""
    if SqliteEventLogStorage.store_event_batch is EventLogStorage.store_event_batch:
        SqliteEventLogStorage.store_event_batch = _store_event_batch  # type: ignore[method-assign]
