"""Scale-out figures (`make bench-scaleout`, not part of `make bench`): the reference city's first full run
at one scale, four ways, one after the other on this machine, each into a lake and state of its own:

- `local`: the lake on local disk, steps in the run's process (the default);
- `1 worker`: steps on one Celery worker process (every queue: the default, the warehouse and each
  agency's), over the local RabbitMQ;
- `2 workers`: steps on two worker processes (both take the default queue and every agency's; the first
  also the warehouse queue, which one process owns);
- `S3`: the lake on a SeaweedFS S3 server on loopback, steps in the run's process.

Each is timed by the wall clock around `citylake run`; CPU is the run's process tree plus, for the
Celery runs, what the worker processes used meanwhile (their own and their reaped children's user+sys
time from /proc). Every variant must publish the indicators `local` does (compared row by row to 1e-9).
Writes benchmarks/SCALEOUT.md. On one 2-core machine this measures the cost of the distribution (broker
hand-offs, object-store round trips), not a speed-up: the workers share the same two cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

from benchmarks import measure
from benchmarks.run import BIN, compare, export_indicators, generate, log, machine, pipeline_env, write_city_config
from tests.rabbitmq import delete_vhost, make_vhost

RESULTS = Path(__file__).with_name("SCALEOUT.md")
BROKER = ("127.0.0.1", 5672)


def _tree_cpu(pid: int) -> float:
    """User + system seconds of a process tree (each process's own and its reaped children's)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in measure.tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


def _workers(root: Path, config: Path, env: dict[str, str], n: int, stack: ExitStack) -> list[int]:
    """Start n `citylake worker` processes (each its own process group, stopped when the stack closes);
    returns their pids once each says it is ready."""
    pids = []
    for i in range(n):
        name = f"bench{i}"
        queues = ["-q", "warehouse", "-q", "dagster"] if i == 0 else ["-q", "dagster"]
        cfg = yaml.safe_load(config.read_text())
        queues += [a for agency in cfg["agencies"] for a in ("-q", f"agency.{agency}")]
        logfile = root / f"{name}.log"
        with open(logfile, "w") as out:
            proc = subprocess.Popen(
                [str(BIN / "citylake"), "worker", "--config", str(config), "-n", name, "-c", "1", *queues],
                env=env,
                cwd=root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stack.callback(_stop_group, proc)
        deadline = time.monotonic() + 300
        while f"{name}@{socket.gethostname()} ready." not in logfile.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{logfile.read_text()[-3000:]}")
            time.sleep(0.5)
        pids.append(proc.pid)
    return pids


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def variant(work: Path, city: Path, label: str, workers: int = 0, s3: dict[str, str] | None = None) -> dict:
    root = work / label.replace(" ", "_")
    root.mkdir(parents=True)
    config = write_city_config(root, city)
    env = pipeline_env()
    catalog = root / "lake" / "catalog.duckdb"
    if s3 is not None:
        cfg = yaml.safe_load(config.read_text())
        cfg["lake"]["root"] = f"s3://citylake/bench/{root.name}"
        cfg["catalog"] = str(root / "catalog.duckdb")
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        env.update(s3)
        catalog = root / "catalog.duckdb"
    with ExitStack() as stack:
        pids: list[int] = []
        if workers:
            vhost = make_vhost("citylake_bench")
            env.update(
                {
                    "CITYLAKE_EXECUTOR": "celery",
                    "CITYLAKE_CELERY_BROKER": f"amqp://guest@{BROKER[0]}:{BROKER[1]}/{vhost}",
                    "CITYLAKE_CONFIG": str(config),
                }
            )
            stack.callback(delete_vhost, vhost)
            pids = _workers(root, config, env, workers, stack)
        before = sum(_tree_cpu(p) for p in pids)
        log(f"scale-out: {label}")
        command = [str(BIN / "citylake"), "run", "--config", str(config)]
        m = measure.run(command, log=root / "run.log", cwd=root, env=env)
        workers_cpu = sum(_tree_cpu(p) for p in pids) - before
    out = {"label": label, **m.as_dict(), "workers_cpu_s": workers_cpu}
    if m.returncode == 0:
        out["indicators"] = str(export_indicators(catalog, root / "indicators.parquet"))
    return out


def render(scale: float, days: int, rows: list[dict], agree: dict[str, dict]) -> str:
    base = rows[0]["wall_s"]
    lines = [
        "# Scale-out figures",
        "",
        f"Written by `make bench-scaleout` ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}): the reference city at scale "
        f"{scale:g} ({days} days), its first full `citylake run`, four ways, one after the other; see "
        "benchmarks/scaleout.py for what each means.",
        "",
        f"Machine: {json.dumps(machine())}",
        "",
        "| variant | wall s | vs local | CPU s (run + workers) | peak RSS MiB (run) | indicators equal local's |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        same = agree.get(r["label"])
        equal = (
            "(itself)"
            if r is rows[0]
            else (
                "run failed" if same is None else f"{'yes' if same['mismatches'] == 0 else 'NO'} ({same['rows']} rows)"
            )
        )
        lines.append(
            f"| {r['label']} | {r['wall_s']:.1f} | {r['wall_s'] / base:.2f} | {r['cpu_s'] + r['workers_cpu_s']:.1f} | "
            f"{r['peak_rss_mib']:.0f} | {equal} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=30)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    from tests.seaweedfs import WEED, seaweedfs

    work = args.work or Path(tempfile.mkdtemp(prefix="citylake-scaleout-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"working in {work}; generating the reference city at scale {args.scale:g}, {args.days} days")
    city = work / "city"
    generate(city, args.scale, args.days, dt.date(2025, 1, 1), 42, work / "generate.log")
    rows = [variant(work, city, "local")]
    try:
        socket.create_connection(BROKER, timeout=3).close()
        rows += [variant(work, city, "1 worker", workers=1), variant(work, city, "2 workers", workers=2)]
    except OSError as exc:
        log(f"no RabbitMQ on {BROKER[0]}:{BROKER[1]} ({exc}): the worker variants are left out")
    if WEED:
        with seaweedfs(work / "seaweedfs") as server:
            rows.append(variant(work, city, "S3", s3=server.env))
    else:
        log("SeaweedFS's weed is not installed: the S3 variant is left out")
    ref = rows[0].get("indicators")
    agree = {r["label"]: compare(Path(ref), Path(r["indicators"])) for r in rows[1:] if ref and r.get("indicators")}
    text = render(args.scale, args.days, rows, agree)
    args.results.write_text(text)
    print(text)
    ok = all(r["returncode"] == 0 for r in rows) and all(a["mismatches"] == 0 for a in agree.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
