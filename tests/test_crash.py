"""kill -9 of a real `citylake run`: in the middle of a bronze Delta write, of dbt, and of publication.

One reference city, generated like the session's clean run (TEST_CITY), goes through, in order: a run
killed while ridership commits its batches, a run killed while dbt builds, a run that completes, a
publication-only run killed between two mart commits, and a publication-only run that completes. Each
kill is SIGKILL to the run's whole process group (Dagster executes steps in the citylake process; dbt
runs as a child of the run's warm dbt server, started by `citylake-dbt`, all in the group). After each:
every Delta table opens at its last committed version, the catalog is the previous one byte for byte, the
warehouse opens read-write (no stale lock), and the next run is not blocked: it marks the killed run
failed and frees the pool slot it held. The runs that complete equal the clean run: the same bronze keys,
none twice, the same quarantine, the same indicators.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
import yaml
from deltalake import DeltaTable

from orchestration.config import load_config
from tests.conftest import BIN, TEST_CITY, CityRun, citylake, write_city_config
from tests.test_pipeline import assert_equal_to_ground_truth

#: ridership commits in batches of this many rows, so a kill can land between two of its commits
BATCH_ROWS = 100
MARK_FAILED = "ended without finishing it (killed?); marked failed by the next citylake run"


@dataclass
class Killed:
    """A `citylake run` killed with SIGKILL: what it printed and its process group at the kill."""

    output: str
    group: list[tuple[int, str]]
    run_id: str


def _process_group(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process in the group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # a zombie is dead already: it only waits for its parent to collect its status
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append((int(entry.name), cmd))
    return found


@contextlib.contextmanager
def dagster_instance(run: CityRun) -> Iterator:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(run.state / "dagster")) as instance:
        yield instance


def run_and_kill(run: CityRun, moment: Callable[[str], bool], *args: str) -> Killed:
    """Start `citylake run` in its own process group and SIGKILL the group when `moment(output)`."""
    env = {**os.environ, "CITYLAKE_CONFIG": str(run.config)}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.Popen(
        [str(BIN / "citylake"), "run", *args, "--config", str(run.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=run.root,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 600
    while not moment("".join(lines)):
        assert proc.poll() is None, "the run ended before the moment to kill it:\n" + "".join(lines)
        assert time.monotonic() < deadline, "the moment to kill never came:\n" + "".join(lines)
        time.sleep(0.02)
    group = _process_group(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    reader.join(timeout=30)
    deadline = time.monotonic() + 30
    while _process_group(proc.pid):
        assert time.monotonic() < deadline, f"processes survived the kill: {_process_group(proc.pid)}"
        time.sleep(0.1)
    with dagster_instance(run) as instance:
        (latest,) = instance.get_runs(limit=1)
    return Killed("".join(lines), group, latest.run_id)


def delta_versions(root: Path) -> dict[str, int]:
    """Every Delta table under `root` opened and read in full: {path: version}."""
    versions = {}
    for log in sorted(root.glob("**/_delta_log")):
        table = DeltaTable(str(log.parent))
        table.to_pyarrow_table()
        versions[str(log.parent.relative_to(root))] = table.version()
    return versions


def bronze_keys(run: CityRun) -> dict[str, list[str]]:
    """Each source's bronze primary keys, sorted (a key loaded twice shows twice)."""
    cfg = load_config(run.config)
    out = {}
    for s in cfg.sources:
        rows = DeltaTable(str(run.lake / "bronze" / s.agency / s.name)).to_pyarrow_table(columns=list(s.primary_key))
        out[s.key] = sorted("|".join(str(v) for v in r.values()) for r in rows.to_pylist())
    return out


def quarantine_ids(run: CityRun) -> dict[str, list[str]]:
    cfg = load_config(run.config)
    return {
        s.key: sorted(
            DeltaTable(str(run.lake / "quarantine" / s.agency / s.name))
            .to_pyarrow_table(columns=["_quarantine_id"])
            .column(0)
            .to_pylist()
        )
        for s in cfg.sources
    }


def run_status(run: CityRun, run_id: str) -> tuple[str, str]:
    """The run's status, and the message of its failure event (what the UI shows for the run)."""
    import dagster as dg

    with dagster_instance(run) as instance:
        record = instance.get_run_by_id(run_id)
        failures = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    return record.status.value, (failures[-1].event_log_entry.dagster_event.message if failures else "")


def open_runs_and_slots(run: CityRun) -> tuple[list[str], list[str]]:
    import dagster as dg

    with dagster_instance(run) as instance:
        running = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        slots = [
            f"{pool}:{claim.run_id}:{claim.step_key}"
            for pool in ("lake_writes", "warehouse")
            for claim in instance.event_log_storage.get_concurrency_info(pool).claimed_slots
        ]
    return [r.run_id for r in running], slots


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> CityRun:
    from orchestration.reference_city import generate

    root = tmp_path_factory.mktemp("crash")
    generate(root / "riverton", **TEST_CITY)
    config = write_city_config(root, root / "riverton", root / "lake", partitioned=False)
    cfg = yaml.safe_load(config.read_text())
    cfg["agencies"]["transport"]["ridership"]["batch_rows"] = BATCH_ROWS
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return CityRun(root, config, root / "riverton", root / "lake", root / "state")


@pytest.fixture(scope="module")
def bronze_killed(city: CityRun) -> Killed:
    """The first run, killed once ridership has committed its 4th batch (its 5th is being written)."""
    log = city.lake / "bronze" / "transport" / "ridership" / "_delta_log"
    return run_and_kill(city, lambda _out: (log / f"{3:020d}.json").exists())


@pytest.fixture(scope="module")
def dbt_killed(city: CityRun, bronze_killed: Killed) -> Killed:
    """The second run: its bronze loads complete, then it is killed while dbt builds the intermediate layer."""
    return run_and_kill(city, lambda out: "materialized intermediate/" in out)


@pytest.fixture(scope="module")
def completed(city: CityRun, dbt_killed: Killed) -> subprocess.CompletedProcess:
    return citylake("run", config=city.config)


@pytest.fixture(scope="module")
def publication_killed(city: CityRun, completed) -> tuple[Killed, str, dict[str, int]]:
    """A publication-only run killed right after its first mart commit; the catalog digest and mart
    versions from before it."""
    before, versions = digest(city.catalog), delta_versions(city.lake / "marts")
    first = city.lake / "marts" / "indicator_catalog" / "_delta_log"
    nxt = first / f"{versions['indicator_catalog'] + 1:020d}.json"
    return run_and_kill(city, lambda _out: nxt.exists(), "--select", 'key:"published/*"'), before, versions


def test_kill_9_during_a_bronze_write_keeps_every_table_at_its_last_commit(city: CityRun, bronze_killed) -> None:
    versions = delta_versions(city.lake)
    ridership = versions["bronze/transport/ridership"]
    rows = DeltaTable(str(city.lake / "bronze" / "transport" / "ridership")).to_pyarrow_table().to_pylist()
    keys = [(r["stop_id"], str(r["service_date"])) for r in rows]
    # only whole batches: every commit added BATCH_ROWS new keys, none twice
    assert ridership >= 3 and len(keys) == BATCH_ROWS * (ridership + 1) == len(set(keys))
    assert not city.catalog.exists() and not list(city.lake.glob(".*tmp*"))
    # what the Dagster UI shows until the next run: the run still STARTED, holding its pool slot
    assert run_status(city, bronze_killed.run_id)[0] == "STARTED"
    running, slots = open_runs_and_slots(city)
    assert running == [bronze_killed.run_id]
    assert slots == [f"lake_writes:{bronze_killed.run_id}:bronze__transport__ridership"]


def test_kill_9_during_dbt_kills_dbt_too_and_leaves_no_lock(city: CityRun, bronze_killed, dbt_killed) -> None:
    # the next run was not blocked by the killed one: it marked it failed and freed its slot
    assert f"Run {bronze_killed.run_id}: " in dbt_killed.output and MARK_FAILED in dbt_killed.output
    status, message = run_status(city, bronze_killed.run_id)
    assert status == "FAILURE" and MARK_FAILED in message
    # dbt was running in the killed run's process group, and did not outlive it (run_and_kill waits for the
    # whole group to end): `citylake-dbt`, and the dbt process forked from the run's warm dbt server
    group = [cmd.split() for _pid, cmd in dbt_killed.group]
    assert [cmd for cmd in group if any(t.endswith("/citylake-dbt") for t in cmd)], dbt_killed.group
    assert len([cmd for cmd in group if "orchestration.warm_dbt" in cmd]) >= 2, dbt_killed.group  # server, child
    assert "materialized bronze/transport/ridership" in dbt_killed.output
    delta_versions(city.lake)
    # the warehouse dbt was writing opens, for writing too: no lock or journal left in the way
    con = duckdb.connect(str(city.warehouse))
    try:
        assert con.execute("select count(*) from information_schema.tables").fetchone()[0] > 0
    finally:
        con.close()
    assert not city.catalog.exists()


def test_the_run_after_the_kills_equals_a_clean_run(
    city: CityRun, city_run: CityRun, bronze_killed, dbt_killed, completed
) -> None:
    assert "succeeded" in completed.stdout
    # bronze: the same keys as the clean run, none lost, none twice; the same quarantine
    mine, clean = bronze_keys(city), bronze_keys(city_run)
    assert mine.keys() == clean.keys()
    for source, keys in mine.items():
        assert keys == clean[source] and len(set(keys)) == len(keys), source
    assert quarantine_ids(city) == quarantine_ids(city_run)
    assert_equal_to_ground_truth(city)
    # both killed runs are marked failed, nothing is left running or holding a pool slot
    assert run_status(city, dbt_killed.run_id)[0] == "FAILURE"
    assert open_runs_and_slots(city) == ([], [])


def test_kill_9_during_publication_leaves_the_previous_catalog(city: CityRun, publication_killed) -> None:
    killed, before, versions = publication_killed
    assert digest(city.catalog) == before
    after = delta_versions(city.lake / "marts")
    assert after["indicator_catalog"] == versions["indicator_catalog"] + 1
    # no temporary catalog was swapped in; a leftover one is swept by the next publication
    con = duckdb.connect(str(city.catalog), read_only=True)
    try:
        published = dict(con.execute("select key, value from _published").fetchall())
    finally:
        con.close()
    assert json.loads(published["run_id"]) != killed.run_id
    # the catalog's recorded versions are still readable from the marts' Delta history
    for mart, version in json.loads(published["delta_versions"]).items():
        DeltaTable(str(city.lake / "marts" / mart), version=version).to_pyarrow_table()

    proc = citylake("run", "--select", 'key:"published/*"', config=city.config)
    assert f"Run {killed.run_id}: " in proc.stderr and MARK_FAILED in proc.stderr
    con = duckdb.connect(str(city.catalog), read_only=True)
    try:
        new = dict(con.execute("select key, value from _published").fetchall())
    finally:
        con.close()
    assert json.loads(new["run_id"]) in proc.stdout
    assert_equal_to_ground_truth(city)
    assert sorted(p.name for p in city.lake.iterdir() if p.is_file()) == ["catalog.duckdb", "indicator_report.html"]
    assert open_runs_and_slots(city) == ([], [])
