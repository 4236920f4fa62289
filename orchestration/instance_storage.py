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
from pathlib import Path

import sqlalchemy


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
