"""Steps of a run on Celery workers (CITYLAKE_EXECUTOR=celery) over the local RabbitMQ, with real worker
processes started here by `citylake worker` (dagster-celery's worker) and a real Dagster instance
(SQLite under the city's state_dir, shared by the run process and the workers).

One small city (test_small_city's, with its 311 calls served by an HTTP API here) is run twice, at the
same time: in-process (the default), and on three workers: `home` (the default queue and the
`warehouse` queue, one process) and two agency workers (the default queue and every agency's queue).
During the Celery run the worker executing the 311 load is SIGKILLed (its whole process group, as when
its machine dies) while the load waits for the API; the broker hands the step to the other agency
worker. The tests then read both runs' outcomes:

- the Celery run succeeded, its steps ran in the workers' processes (more than one), and its indicators
  equal the in-process run's;
- each agency's loads were sent to its queue and run only by workers consuming it (never by `home`);
  every step that opens the DuckDB warehouse went to `warehouse` and ran on `home`;
- the `lake_writes` pool held across the workers: no two loads ran at once;
- the killed load was run again by another worker and the run still succeeded, with every bronze table
  holding exactly the rows of the undisturbed in-process run, no key twice.

Nothing is mocked: the only stand-in is the 311 API, a real HTTP server on loopback that holds the
Celery run's first request until the test has killed the worker that sent it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.conftest import BIN, unavailable
from tests.rabbitmq import delete_vhost, make_vhost
from tests.test_small_city import write_city

BROKER = ("127.0.0.1", 5672)
CALLS = [
    {"ticket": "1", "opened": "2025-03-01 09:00", "closed": "2025-03-02 09:00", "kind": "POTHOLE", "ward": "N1"},
    {"ticket": "2", "opened": "2025-03-02 09:00", "closed": "2025-03-07 09:00", "kind": "POTHOLE", "ward": "N1"},
    {"ticket": "3", "opened": "2025-03-03 09:00", "closed": "2025-03-04 21:00", "kind": "NOISE", "ward": "S2"},
    {"ticket": "4", "opened": "2025-03-04 09:00", "closed": None, "kind": "NOISE", "ward": "S2"},
]
LOAD_KILLED = "bronze__contact__calls"
WAIT_S = 600


class Api:
    """The 311 contact centre's API: /<city>/calls.json. The Celery city's first request is held until
    the test has killed the worker that made it."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.requests: list[str] = []

    def serve(self) -> ThreadingHTTPServer:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                api.requests.append(self.path)
                if self.path.startswith("/celery/") and not api.arrived.is_set():
                    api.arrived.set()
                    api.release.wait(WAIT_S)
                body = json.dumps(CALLS).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client was killed meanwhile

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def _city(root: Path, url: str) -> Path:
    """test_small_city's city, its 311 calls read from the API instead of a CSV drop."""
    root.mkdir()
    config = write_city(root)
    cfg = yaml.safe_load(config.read_text())
    calls = cfg["agencies"]["contact"]["calls"]
    for key in ("path", "format"):
        calls.pop(key)
    calls.update({"kind": "http_json", "url": url})
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen
    log: Path

    def ready(self) -> bool:
        return f"{self.name}@{socket.gethostname()} ready." in self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Runs:
    inproc: Path
    celery: Path
    output: str
    inproc_output: str
    #: the `citylake run` process of the Celery city
    orchestrator_pid: int
    workers: dict[str, Worker]
    victim: str
    #: per Dagster run of the Celery city: its status and its events
    statuses: list[str] = field(default_factory=list)
    #: (step key, worker hostname) of each "Executing steps ... in celery worker" event, in order
    executions: list[tuple[str, str]] = field(default_factory=list)
    #: step key -> the queue it was submitted to
    queues: dict[str, str] = field(default_factory=dict)
    #: step key -> the process ids of its STEP_SUCCESS events
    successes: dict[str, list[int]] = field(default_factory=dict)
    #: step key -> (its first STEP_START, its last STEP_SUCCESS), as timestamps
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)


def _read_instance(runs: Runs) -> None:
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(runs.celery.parent / "state" / "dagster"))
    try:
        for run in reversed(instance.get_runs()):
            runs.statuses.append(run.status.value)
            for entry in instance.all_logs(run.run_id):
                event = entry.dagster_event
                if event is None:
                    continue
                message = event.message or ""
                if event.event_type_value == "ENGINE_EVENT" and message.endswith("in celery worker"):
                    host = event.event_specific_data.metadata["Celery worker"].value
                    runs.executions.append((entry.step_key, host))
                elif event.event_type_value == "ENGINE_EVENT" and message.startswith("Submitting celery task"):
                    runs.queues[entry.step_key] = message.rsplit('to queue "', 1)[1].rstrip('".')
                elif event.event_type_value == "STEP_SUCCESS":
                    runs.successes.setdefault(entry.step_key, []).append(event.pid)
                    runs.spans[entry.step_key] = (runs.spans[entry.step_key][0], entry.timestamp)
                elif event.event_type_value == "STEP_START" and entry.step_key not in runs.spans:
                    runs.spans[entry.step_key] = (entry.timestamp, entry.timestamp)
    finally:
        instance.dispose()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    try:
        socket.create_connection(BROKER, timeout=3).close()
    except OSError as exc:
        unavailable(f"RabbitMQ is not reachable on {BROKER[0]}:{BROKER[1]} ({exc}); the workers need a broker")
    try:
        import dagster_celery  # noqa: F401
    except ImportError as exc:
        unavailable(f"dagster-celery is not installed ({exc}); pip install -e '.[dev]'")
    root = tmp_path_factory.mktemp("workers")
    api = Api()
    server = api.serve()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    inproc = _city(root / "inproc", f"{base}/inproc/calls.json")
    celery = _city(root / "celery", f"{base}/celery/calls.json")
    vhost = make_vhost()
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CITYLAKE_EXECUTOR")}
    celery_env = {
        **env,
        "CITYLAKE_CONFIG": str(celery),
        "CITYLAKE_EXECUTOR": "celery",
        "CITYLAKE_CELERY_BROKER": f"amqp://guest@{BROKER[0]}:{BROKER[1]}/{vhost}",
    }
    workers: dict[str, Worker] = {}
    procs: list[subprocess.Popen] = []
    try:
        # the undisturbed in-process run of the same city, beside the Celery one
        reference = subprocess.Popen(
            [str(BIN / "citylake"), "run", "--config", str(inproc)],
            env={**env, "CITYLAKE_CONFIG": str(inproc)},
            cwd=inproc.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(reference)
        for name, queues in (("home", ["-q", "dagster", "-q", "warehouse"]), ("agency_a", []), ("agency_b", [])):
            log = root / f"{name}.log"
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    [str(BIN / "citylake"), "worker", "--config", str(celery), "-n", name, "-c", "1", *queues],
                    env=celery_env,
                    cwd=celery.parent,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: killed whole, as a machine's death would
                )
            workers[name] = Worker(name, proc, log)
        deadline = time.monotonic() + 180
        while not all(w.ready() for w in workers.values()):
            dead = [w for w in workers.values() if w.proc.poll() is not None]
            logs = "\n".join(w.log.read_text()[-3000:] for w in workers.values())
            assert not dead and time.monotonic() < deadline, logs
            time.sleep(0.5)
        run = subprocess.Popen(
            [str(BIN / "citylake"), "run", "--config", str(celery)],
            env=celery_env,
            cwd=celery.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(run)
        # the 311 load is waiting for the API: kill the worker running it, then let the API answer
        assert api.arrived.wait(WAIT_S), "the Celery run never requested the 311 API"
        partial = Runs(inproc, celery, "", "", run.pid, workers, "")
        _read_instance(partial)
        started = [host for step, host in partial.executions if step == LOAD_KILLED]
        assert len(started) == 1, partial.executions
        victim = started[0].split("@")[0]
        workers[victim].kill()
        workers[victim].proc.wait(timeout=30)
        api.release.set()
        output, _ = run.communicate(timeout=WAIT_S)
        inproc_output, _ = reference.communicate(timeout=WAIT_S)
        assert run.returncode == 0, output[-5000:]
        assert reference.returncode == 0, inproc_output[-5000:]
        result = Runs(inproc, celery, output, inproc_output, run.pid, workers, victim)
        _read_instance(result)
        yield result
    finally:
        api.release.set()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for w in workers.values():
            w.kill(signal.SIGTERM)
        for w in workers.values():
            try:
                w.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                w.kill()
        server.shutdown()
        delete_vhost(vhost)


def _indicators(city: Path) -> list[tuple]:
    with duckdb.connect(str(city.parent / "lake" / "catalog.duckdb"), read_only=True) as con:
        return con.execute(
            "select indicator_id, area_id, period_grain, period_start, value, numerator, denominator, coverage "
            "from indicators order by all"
        ).fetchall()


def test_a_run_on_two_workers_completes_and_its_indicators_equal_the_in_process_runs(runs: Runs) -> None:
    assert runs.statuses == ["SUCCESS", "SUCCESS"], runs.output[-3000:]  # the loads' run, then the rest
    # every step ran in a worker's process, not in `citylake run`'s; more than one worker did work
    hosts = {host.split("@")[0] for _step, host in runs.executions}
    assert hosts <= set(runs.workers) and len(hosts) >= 2, runs.executions
    pids = {pid for step_pids in runs.successes.values() for pid in step_pids}
    assert runs.orchestrator_pid not in pids and len(pids) >= 2, runs.successes
    assert {step for step, _host in runs.executions} == set(runs.successes) == set(runs.queues)
    assert "Steps run on the Celery workers" in runs.output
    indicators = _indicators(runs.celery)
    assert indicators and indicators == _indicators(runs.inproc)
    # a value test_small_city counts by hand: deaths per 100 000 in N1 in March 2025 (2 deaths, 1,000 people)
    march = {
        (i, a): (v, n, d) for i, a, g, start, v, n, d, _c in indicators if g == "month" and str(start) == "2025-03-01"
    }
    assert march[("iso37120_18_8", "N1")] == pytest.approx((200.0, 2.0, 0.01))


def test_each_agencys_loads_go_to_its_queue_and_warehouse_steps_to_the_one_warehouse_worker(runs: Runs) -> None:
    loads = {step for step in runs.queues if step.startswith("bronze__") and not step.endswith("_gx_suite")}
    assert loads == {"bronze__roads_police__crashes", "bronze__air_lab__sensors", "bronze__contact__calls"}
    for step in loads:
        assert runs.queues[step] == "agency." + step.split("__")[1], (step, runs.queues[step])
    ran_on = {}
    for step, host in runs.executions:
        ran_on.setdefault(step, set()).add(host.split("@")[0])
    # `home` consumes the default and warehouse queues, not the agencies': it ran none of the loads
    assert all(ran_on[step] <= {"agency_a", "agency_b"} for step in loads), ran_on
    warehouse = {step for step, queue in runs.queues.items() if queue == "warehouse"}
    assert {"dbt_reference", "dbt_from_facts", "publish", "marts__indicators_gx_suite"} <= warehouse
    assert all(ran_on[step] == {"home"} for step in warehouse), ran_on
    # the bronze gates read only the lake: the default queue, any worker
    assert runs.queues["bronze__contact__calls_gx_suite"] == "dagster"
    assert set(runs.queues.values()) == {"dagster", "warehouse", *(f"agency.{s.split('__')[1]}" for s in loads)}


def test_the_lake_writes_pool_holds_across_workers(runs: Runs) -> None:
    """Two workers consume every agency's queue, but the bronze loads take the `lake_writes` pool (one
    step at a time by default): the run process claims the slot in the shared instance before it
    submits a load, so no two loads ran at once, the killed one included (its slot stayed taken)."""
    loads = sorted(
        (runs.spans[step] for step in runs.queues if runs.queues[step].startswith("agency.")), key=lambda s: s[0]
    )
    assert len(loads) == 3
    assert all(earlier[1] <= later[0] for earlier, later in zip(loads, loads[1:], strict=False)), loads


def test_a_worker_killed_during_a_load_is_replaced_and_no_row_is_lost_or_duplicated(runs: Runs) -> None:
    assert runs.workers[runs.victim].proc.poll() == -signal.SIGKILL
    attempts = [host.split("@")[0] for step, host in runs.executions if step == LOAD_KILLED]
    # started on the killed worker, delivered again by the broker, run to the end by the other agency worker
    assert attempts[0] == runs.victim and len(attempts) == 2 and attempts[1] in {"agency_a", "agency_b"} - {runs.victim}
    assert len(runs.successes[LOAD_KILLED]) == 1
    assert runs.statuses == ["SUCCESS", "SUCCESS"]
    from orchestration.lake import read_table

    for agency, source in (("contact", "calls"), ("roads_police", "crashes"), ("air_lab", "sensors")):
        tables = [read_table(str(c.parent / "lake" / "bronze" / agency / source)) for c in (runs.celery, runs.inproc)]
        # the rows as delivered (the ingestion columns name the run, the time and the city's own paths)
        celery, inproc = (
            sorted(map(str, t.select([c for c in t.column_names if not c.startswith("_")]).to_pylist())) for t in tables
        )
        assert len(celery) == len(inproc) > 0 and celery == inproc, (agency, source)
    calls = read_table(str(runs.celery.parent / "lake" / "bronze" / "contact" / "calls")).column("ticket").to_pylist()
    assert sorted(calls) == ["1", "2", "3", "4"]


def _refused(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    """`citylake ARGS` on a small city, with `env` instead of the executor settings of the environment:
    it must exit 1 before starting anything; returns what it printed."""
    (tmp_path / "city").mkdir(parents=True)
    config = write_city(tmp_path / "city")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CITYLAKE_EXECUTOR", "CITYLAKE_CELERY"))}
    proc = subprocess.run(
        [str(BIN / "citylake"), *args, "--config", str(config)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc.stderr


def test_the_executor_settings_are_checked_before_anything_starts(tmp_path: Path) -> None:
    err = _refused(tmp_path, {"CITYLAKE_EXECUTOR": "dask"}, "check")
    assert "CITYLAKE_EXECUTOR='dask': expected one of in_process, celery" in err
    # a worker without a broker URL says which variable
    err = _refused(tmp_path / "w", {}, "worker")
    assert "CITYLAKE_EXECUTOR=celery needs CITYLAKE_CELERY_BROKER, the broker's URL" in err


def test_the_warehouse_queue_takes_one_worker_process(tmp_path: Path) -> None:
    err = _refused(
        tmp_path, {"CITYLAKE_CELERY_BROKER": "amqp://guest@127.0.0.1:5672//"}, "worker", "-q", "warehouse", "-c", "2"
    )
    assert "--queue warehouse: the DuckDB warehouse takes one process" in err
