"""Publication is atomic and never blocks anyone, proved with separate processes.

The catalog swap is tested on small catalogs built by `publish.build_catalog` (the function the
pipeline calls), with readers and a crashing publisher in their own processes; the last test holds
the real reference city's catalog open in an analyst process while `citylake run` republishes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from orchestration.publish import REPORT_NAME, build_catalog
from tests.conftest import REPO, CityRun, citylake

ROWS = 50_000


def version_tables(version: int, rows: int = ROWS) -> dict[str, pa.Table]:
    """Two tables that must always agree: both carry the publication's version in every row."""
    return {
        "a": pa.table({"version": pa.array([version] * rows, pa.int64()), "i": pa.array(range(rows), pa.int64())}),
        "b": pa.table({"version": pa.array([version] * rows, pa.int64())}),
    }


def publish_version(target: Path, version: int, rows: int = ROWS) -> None:
    report = target.with_name(REPORT_NAME)
    build_catalog(
        target,
        version_tables(version, rows),
        {"a": {"description": "table a"}},
        {"version": version},
        render=lambda con: {report: f"<p>version {con.execute('select max(version) from a').fetchone()[0]}</p>"},
    )


def catalog_version(target: Path) -> tuple[int, int, int]:
    con = duckdb.connect(str(target), read_only=True)
    try:
        return con.execute(
            "select (select max(version) from a), (select min(version) from b), count(*) from a"
        ).fetchone()
    finally:
        con.close()


def python(code: str, *args: str) -> subprocess.Popen:
    """A separate Python process (isolated mode: no citylake on its path unless it adds the repo)."""
    return subprocess.Popen(
        [sys.executable, "-I", "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


# reads the catalog in a loop until the stop file appears; prints one JSON line per read
READER = """
import duckdb, json, sys, os, time
path, stop, mode = sys.argv[1], sys.argv[2], sys.argv[3]
held = duckdb.connect(path, read_only=True) if mode == "hold" else None
print(json.dumps({"ready": True}), flush=True)
while not os.path.exists(stop):
    con = held or duckdb.connect(path, read_only=True)
    try:
        a, b, n = con.execute(
            "select (select max(version) from a), (select min(version) from b), count(*) from a"
        ).fetchone()
        print(json.dumps({"a": a, "b": b, "n": n}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
    finally:
        if held is None:
            con.close()
print(json.dumps({"done": True}), flush=True)
"""


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert json.loads(line) == {"ready": True}, line + proc.stderr.read()


def test_readers_see_the_old_or_the_new_catalog_never_a_mix(tmp_path: Path) -> None:
    target = tmp_path / "catalog.duckdb"
    stop = tmp_path / "stop"
    publish_version(target, 1)
    holder = python(READER, str(target), str(stop), "hold")
    poller = python(READER, str(target), str(stop), "reconnect")
    wait_ready(holder)
    wait_ready(poller)
    t0 = time.perf_counter()
    for version in range(2, 22):
        publish_version(target, version)
    publishing = time.perf_counter() - t0
    time.sleep(1)  # let the reconnecting reader see the last version
    stop.touch()
    reads = {}
    for name, proc in (("holder", holder), ("poller", poller)):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        reads[name] = [json.loads(line) for line in out.splitlines() if '"a"' in line or "error" in line]

    for name, seen in reads.items():
        assert seen, f"the {name} made no read"
        assert not [r for r in seen if "error" in r], f"{name}: {seen[:3]}"
        # the two tables always come from the same publication, complete
        assert all(r["a"] == r["b"] and r["n"] == ROWS for r in seen), name
    # a connection held open keeps its version through 20 swaps...
    assert {r["a"] for r in reads["holder"]} == {1}
    # ...while a reader that reconnects moves forward through them
    versions = [r["a"] for r in reads["poller"]]
    assert versions == sorted(versions) and versions[-1] == 21 and len(set(versions)) > 2, set(versions)
    # the publisher never waited for the readers: 20 publications of 2 x 50 000 rows in seconds
    assert publishing < 60
    assert catalog_version(target) == (21, 21, ROWS)
    assert target.with_name(REPORT_NAME).read_text() == "<p>version 21</p>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.duckdb", REPORT_NAME, "stop"]


# publishes version 2 through the real build_catalog, and fails in the way argv[2] says
FAILING_PUBLISHER = """
import sys, time
sys.path.insert(0, sys.argv[3])
from pathlib import Path
import pyarrow as pa
from orchestration.publish import build_catalog

target, how = Path(sys.argv[1]), sys.argv[2]
rows = 3_000_000 if how == "crash" else 1000
tables = {"a": pa.table({"version": [2] * rows, "i": list(range(rows))}), "b": pa.table({"version": [2] * rows})}

def render(con):
    if how == "crash":
        print("built", flush=True)
        time.sleep(60)  # killed here: the new catalog is complete in its temporary file, not swapped
    raise RuntimeError("the report could not be rendered")

build_catalog(target, tables, {}, {"version": 2}, render=lambda con: render(con))
"""


@pytest.mark.parametrize("how", ["error", "crash"])
def test_a_failed_publication_leaves_the_previous_catalog_in_place(tmp_path: Path, how: str) -> None:
    target = tmp_path / "catalog.duckdb"
    publish_version(target, 1, rows=10)
    before = target.read_bytes()
    report_before = target.with_name(REPORT_NAME).read_text()
    reader = duckdb.connect(str(target), read_only=True)  # an analyst, in this process, meanwhile

    proc = python(FAILING_PUBLISHER, str(target), how, str(REPO))
    if how == "crash":
        assert proc.stdout.readline().strip() == "built", proc.stderr.read()
        assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "the build writes a temporary file"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    else:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and "the report could not be rendered" in err
        assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name], "a failed build cleans up after itself"

    assert target.read_bytes() == before
    assert target.with_name(REPORT_NAME).read_text() == report_before
    assert reader.execute("select max(version), count(*) from a").fetchone() == (1, 10)
    reader.close()
    assert catalog_version(target) == (1, 1, 10)
    # the next publication succeeds and sweeps up what the killed one left behind
    publish_version(target, 3, rows=10)
    assert catalog_version(target) == (3, 3, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.duckdb", REPORT_NAME]


# an analyst's session on the real catalog: one connection held open the whole time, querying
ANALYST = """
import duckdb, json, os, sys, time
con = duckdb.connect(sys.argv[1], read_only=True)
run_id = con.execute("select value from _published where key = 'run_id'").fetchone()[0]
print(json.dumps({"ready": True}), flush=True)
reads, errors = 0, []
while not os.path.exists(sys.argv[2]):
    try:
        con.execute(
            "select area_id, avg(value) from indicators where indicator_id = 'iso37120_8_1' group by 1"
        ).fetchall()
        reads += 1
    except Exception as exc:
        errors.append(str(exc))
    time.sleep(0.05)
still = con.execute("select value from _published where key = 'run_id'").fetchone()[0]
print(json.dumps({"reads": reads, "errors": errors, "run_id": run_id, "still": still,
                  "citylake_imported": "orchestration" in sys.modules}), flush=True)
"""


def test_an_analyst_holding_the_catalog_open_does_not_block_a_pipeline_run(city_run: CityRun, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    analyst = python(ANALYST, str(city_run.catalog), str(stop))
    wait_ready(analyst)
    t0 = time.perf_counter()
    proc = citylake("run", "--select", 'key:"published/*"', config=city_run.config, check=False, timeout=300)
    took = time.perf_counter() - t0
    stop.touch()
    out, err = analyst.communicate(timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "materialized published/analyst_catalog" in proc.stderr  # progress lines go to stderr
    session = json.loads(out.splitlines()[-1])
    # the analyst kept answering throughout the run, from the version it had open
    assert session["errors"] == [] and session["reads"] > 10, session
    assert session["still"] == session["run_id"] and not session["citylake_imported"]
    assert took < 300

    con = duckdb.connect(str(city_run.catalog), read_only=True)
    try:
        new_run = con.execute("select value from _published where key = 'run_id'").fetchone()[0]
    finally:
        con.close()
    assert new_run != session["run_id"]
    assert json.loads(new_run) in proc.stdout  # "Run <id> succeeded."

    # the run's catalog materialization links the report written beside the catalog
    import dagster as dg

    env = {"DAGSTER_HOME": str(city_run.state / "dagster")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with dg.DagsterInstance.get() as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey(["published", "analyst_catalog"]))
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    metadata = event.asset_materialization.metadata
    report = city_run.catalog.with_name(REPORT_NAME)
    assert event.run_id == json.loads(new_run)
    # the UI links the report on the docs server (citylake docs / dev); its file is beside the catalog
    assert metadata["report"].value.startswith("http://127.0.0.1:") and metadata["report"].value.endswith(REPORT_NAME)
    assert metadata["report_path"].value == str(report) and report.exists()
    assert metadata["path"].value == str(city_run.catalog)
