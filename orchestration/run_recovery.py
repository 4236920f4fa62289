"""Runs that a killed `citylake run` left behind: marked failed, their concurrency-pool slots freed.

`citylake run` executes its Dagster run in its own process (the in-process executor). When that
process dies without a word (SIGKILL, the OOM killer, a reboot), nobody reports the run's end: it
stays STARTED in the instance, and it keeps the slot it held in the `lake_writes` or `warehouse`
pool, so every later run (from the terminal or the UI) would wait for that slot forever.

Each run `citylake run` starts is therefore tagged with the host, process id and process start time
of the process executing it. The next `citylake run` (and `citylake dev`) marks the tagged runs whose
process is gone as failed, with a message saying so (what the UI then shows), and frees their slots.
Runs of a live process, and runs started on another host (a shared PostgreSQL instance), are left
alone; runs launched from the UI run under Dagster's own launcher and are not tagged.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

TAG_HOST = "citylake/host"
TAG_PID = "citylake/pid"
#: the process's start time (clock ticks since boot on Linux): a reused pid is not taken for the run's process
TAG_PROCESS_START = "citylake/process_start"


def _process_start(pid: int) -> str:
    """When process `pid` started (Linux /proc; '' elsewhere or when there is no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return ""
    # the command name (field 2) may hold spaces and parentheses: count fields after the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


def process_tags() -> dict[str, str]:
    """Tags naming this process, put on every run it executes."""
    pid = os.getpid()
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(pid), TAG_PROCESS_START: _process_start(pid)}


def _running(tags: dict[str, str]) -> bool:
    pid = int(tags[TAG_PID])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = tags.get(TAG_PROCESS_START, "")
    return not started or _process_start(pid) in ("", started)


def recover_abandoned_runs(instance, log: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Mark this host's citylake runs whose process is gone as failed and free their pool slots.

    Returns the run ids recovered.
    """
    import dagster as dg

    active = [
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    host = socket.gethostname()
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=active, tags={TAG_HOST: host}))
    recovered = []
    for run in runs:
        if TAG_PID not in run.tags or _running(run.tags):
            continue
        message = (
            f"the citylake process running it (pid {run.tags[TAG_PID]} on {host}) ended without finishing it "
            "(killed?); marked failed by the next citylake run. Rerun it: every write is idempotent."
        )
        instance.report_run_failed(run, message=message)
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log(f"Run {run.run_id}: {message}")
        recovered.append(run.run_id)
    return recovered
