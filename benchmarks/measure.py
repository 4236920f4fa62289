"""Run one command in its own process tree and measure it: wall time, CPU time, peak RSS, bytes read.

- wall: perf_counter around the whole subprocess.
- CPU: user + sys of every process of the tree, from wait4(2) on the command (the kernel adds a reaped
  descendant's time to its parent, so the whole tree is in the command's own rusage when it exits; the
  same figure getrusage(RUSAGE_CHILDREN) would give, without counting a profiler attached beside it).
- peak RSS: /proc is polled every `interval` seconds for the tree (the command and every descendant,
  found by parent pid) and the sum of their resident sets is taken; the peak is the maximum of those
  sums (and never less than the largest single process's ru_maxrss, which the kernel keeps exactly).
- bytes read: the tree's `rchar` (bytes returned by read(2) and friends, page cache or not) and
  `read_bytes` (bytes fetched from storage) from /proc/<pid>/io, at the last poll before each exit.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Measurement:
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    peak_rss_mib: float
    rchar_mib: float
    read_mib: float
    returncode: int

    def as_dict(self) -> dict:
        return asdict(self)


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: fields start after the last ")"
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(root: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _io(pid: int) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/io") as f:
            fields = dict(line.split(": ") for line in f.read().splitlines())
        return int(fields["rchar"]), int(fields["read_bytes"])
    except (OSError, KeyError, ValueError):
        return 0, 0


def run(
    cmd: list[str],
    *,
    log: Path,
    cwd: Path | None = None,
    env: dict | None = None,
    interval: float = 0.05,
    profile: Path | None = None,
    py_spy: str = "py-spy",
) -> Measurement:
    """Run `cmd` (stdout and stderr to `log`) and measure its process tree; with `profile`, py-spy samples
    it (attached from outside the tree, 20 Hz, non-blocking) into that file as collapsed stacks."""
    peak = 0
    io_seen: dict[int, tuple[int, int]] = {}
    done = threading.Event()
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        spy = None
        if profile is not None:
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--rate",
                    "20",
                    "--nonblocking",
                    "--subprocesses",
                    "--format",
                    "raw",
                    "--output",
                    str(profile),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        def poll() -> None:
            nonlocal peak
            while not done.is_set():
                pids = tree(proc.pid)
                peak = max(peak, sum(_rss(p) for p in pids))
                for p in pids:
                    rc, rb = _io(p)
                    if rc or rb:
                        io_seen[p] = (rc, rb)
                done.wait(interval)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        done.set()
        poller.join()
        if spy is not None:
            spy.wait()
    user, sys_ = usage.ru_utime, usage.ru_stime
    # ru_maxrss is the largest single process of the tree (KiB): a floor under the polled tree peak
    peak = max(peak, usage.ru_maxrss * 1024)
    return Measurement(
        wall_s=wall,
        cpu_s=user + sys_,
        user_s=user,
        sys_s=sys_,
        peak_rss_mib=peak / 2**20,
        rchar_mib=sum(v[0] for v in io_seen.values()) / 2**20,
        read_mib=sum(v[1] for v in io_seen.values()) / 2**20,
        returncode=rc,
    )
