"""Dagster's SQLite event log with citylake's batch write and kept engines (orchestration/instance_storage.py,
`faster_sqlite_event_log`): a run over a range of days stores its per-day materializations a batch at a
time. It must record exactly what Dagster's own one-at-a-time writes record: the same partitions
materialized, one event per partition, the same latest materialization, whatever the range and the
batch size."""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy
from dagster import (
    AssetKey,
    BackfillPolicy,
    DagsterInstance,
    DailyPartitionsDefinition,
    asset,
    materialize,
)
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.base import EventLogStorage
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from orchestration import instance_storage

TEMPLATE = Path(__file__).resolve().parent.parent / "orchestration" / "instance" / "dagster.yaml"


def _instance(home: Path) -> DagsterInstance:
    """An instance made as citylake makes one (its template: SQLite storage under the folder)."""
    home.mkdir()
    shutil.copyfile(TEMPLATE, home / "dagster.yaml")
    return DagsterInstance.from_config(str(home))


def _record(instance: DagsterInstance, partitions: DailyPartitionsDefinition, ranges: list[tuple[str, str]]) -> dict:
    """Materialize `ranges` of days of two assets, one run per range; what the instance then says."""

    @asset(partitions_def=partitions, backfill_policy=BackfillPolicy.single_run())
    def upstream(context) -> None:
        context.log.info(f"{len(context.partition_keys)} days")

    @asset(partitions_def=partitions, backfill_policy=BackfillPolicy.single_run(), deps=[upstream])
    def downstream(context) -> None:
        context.log.info(f"{len(context.partition_keys)} days")

    for start, end in ranges:
        tags = {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}
        assert materialize([upstream, downstream], instance=instance, tags=tags).success
    out = {}
    for name in ("upstream", "downstream"):
        key = AssetKey(name)
        records = instance.fetch_materializations(key, limit=10_000).records
        latest = instance.get_latest_materialization_event(key)
        out[name] = {
            "partitions": sorted(instance.get_materialized_partitions(key)),
            "events": sorted(r.partition_key for r in records),
            "distinct ids": len({r.storage_id for r in records}) == len(records),
            "latest": latest.dagster_event.partition if latest else None,
            "latest run": latest.run_id if latest else None,
            "runs": len(instance.get_runs()),
        }
    return out


def stock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster's own SQLite event log methods back in place (until the test ends)."""
    monkeypatch.setattr(SqliteEventLogStorage, "store_event_batch", EventLogStorage.store_event_batch)
    for name in ("_connect", "has_table", "wipe", "dispose"):
        monkeypatch.setattr(SqliteEventLogStorage, name, instance_storage.STOCK[name])


@pytest.mark.parametrize("seed", [3, 17])
def test_batched_event_log_records_what_dagsters_own_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    start = dt.date(2000, 1, 1) + dt.timedelta(days=rng.randrange(9000))
    days = rng.randrange(40, 250)
    partitions = DailyPartitionsDefinition(
        start_date=start.isoformat(), end_date=(start + dt.timedelta(days)).isoformat()
    )
    keys = partitions.get_partition_keys()
    # a first range, then an overlapping later one (a rerun of some days, then new ones)
    a, b = sorted(rng.sample(range(len(keys)), 2))
    c = rng.randrange(a, b + 1)
    ranges = [(keys[a], keys[b]), (keys[c], keys[-1])]
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", str(rng.choice([7, 1000])))
    written: list[int] = []
    batch_write = instance_storage._store_event_batch

    def counted(storage, events):
        written.append(len(events))
        batch_write(storage, events)

    monkeypatch.setattr(instance_storage, "_store_event_batch", counted)
    stock(monkeypatch)
    instance_storage.faster_sqlite_event_log()
    assert SqliteEventLogStorage._connect is instance_storage._connect
    with _instance(tmp_path / "city") as city:
        assert isinstance(city.event_log_storage, SqliteEventLogStorage)
        batched = _record(city, partitions, ranges)
    assert max(written) > 1, "the materializations went through the batch write"

    stock(monkeypatch)
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE")
    with _instance(tmp_path / "stock") as dagsters:
        own = _record(dagsters, partitions, ranges)

    for name in ("upstream", "downstream"):
        expected = sorted(set(keys[a : b + 1]) | set(keys[c:]))
        assert batched[name]["partitions"] == own[name]["partitions"] == expected
        assert batched[name]["events"] == own[name]["events"]
        assert len(batched[name]["events"]) == (b - a + 1) + (len(keys) - c)
        assert batched[name]["distinct ids"] and own[name]["distinct ids"]
        assert batched[name]["latest"] == own[name]["latest"] == keys[-1]
        assert batched[name]["runs"] == own[name]["runs"] == 2


#: a second process materializing into the same instance (DAGSTER_HOME = argv[1]) while the test's own
#: instance keeps its connections open; it fails (SQLite's "database is locked") if one holds a lock
_OTHER_PROCESS = """
import sys
from dagster import DagsterInstance, asset, materialize
from orchestration import instance_storage

instance_storage.faster_sqlite_event_log()

@asset
def written_elsewhere(context) -> None:
    for i in range(40):
        context.log.info(f"line {i}")

with DagsterInstance.from_config(sys.argv[1]) as instance:
    for _ in range(3):
        assert materialize([written_elsewhere], instance=instance).success
"""


def test_kept_connections_are_reused_hold_no_lock_and_are_closed_by_wipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engines keep a connection open per SQLite file: a run's events reuse it (few connects for many
    events), another process writes to the same files meanwhile (no lock is held between uses) and this
    process then reads what it wrote, and a wipe (which deletes the runs' files) closes them; what is
    written afterwards is in the files another instance reads."""
    stock(monkeypatch)
    instance_storage.faster_sqlite_event_log()
    connects: list[str] = []

    def counted(dbapi_connection, _record) -> None:
        connects.append(dbapi_connection.execute("PRAGMA database_list").fetchall()[0][2])

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", counted)
    try:
        partitions = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-03-01")
        home = tmp_path / "home"
        with _instance(home) as instance:
            first = _record(instance, partitions, [("2024-01-01", "2024-02-29")])
            events = len(instance.get_records_for_run(instance.get_runs()[0].run_id, limit=100_000).records)
            index_connects = [f for f in connects if f.endswith("index.db")]
            # a handful (Dagster's own setup of the index, its schema check): not one or two per event
            assert events > 200 and len(index_connects) <= 10, (events, connects)

            # another process writes three runs into the same files while this instance keeps its connections
            other = subprocess.run(
                [sys.executable, "-c", _OTHER_PROCESS, str(home)],
                check=False,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert other.returncode == 0, other.stderr[-3000:]
            elsewhere = instance.fetch_materializations(AssetKey("written_elsewhere"), limit=100).records
            assert len(elsewhere) == 3  # read on the kept connection: the other process's commits are seen
            # and this process writes again after it
            again = _record(instance, partitions, [("2024-02-01", "2024-02-29")])
            assert again["upstream"]["runs"] == 1 + 3 + 1
            assert len(again["upstream"]["events"]) == len(first["upstream"]["events"]) + 29

            instance.wipe()
            assert instance.get_runs() == []
            # no connection is kept to a run's file the wipe deleted (it would hold its disk space)
            held = [os.readlink(f) for f in Path("/proc/self/fd").iterdir() if f.is_symlink()]
            assert not [f for f in held if f.startswith(str(home)) and f.endswith("(deleted)")], held
            _record(instance, partitions, [("2024-02-10", "2024-02-11")])
        # a new instance on the same folder reads the run written after the wipe from the files on disk
        with DagsterInstance.from_config(str(home)) as fresh:
            runs = fresh.get_runs()
            assert len(runs) == 1
            key = AssetKey("downstream")
            assert sorted(fresh.get_materialized_partitions(key)) == ["2024-02-10", "2024-02-11"]
            assert len(fresh.get_records_for_run(runs[0].run_id, limit=100_000).records) > 5
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", counted)
