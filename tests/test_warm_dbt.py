"""The warm dbt server (orchestration/warm_dbt.py): `citylake-dbt` runs real dbt, forked from the server when
one runs, itself when none does, with the caller's arguments, folder, environment, streams and exit status;
signals reach the dbt process; a dbt process whose client was killed stops; the server ends with its block.

A tiny dbt-duckdb project is written for each test; its Python model records its own process and parent
process ids in the warehouse (so a test can tell who ran it), and can sleep (so a test can interrupt it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from orchestration import warm_dbt

CLIENT = Path(sys.executable).with_name("citylake-dbt")
pytestmark = pytest.mark.skipif(not CLIENT.exists(), reason="citylake-dbt is not installed (run `make install`)")


def project(root: Path, sleep_s: int = 0) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "dbt_project.yml").write_text("name: warm\nversion: '1.0'\nprofile: warm\nconfig-version: 2\n")
    (root / "profiles.yml").write_text(
        "warm:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: warehouse.duckdb\n"
    )
    (root / "models" / "who.py").write_text(
        "import os, time\n\n"
        "def model(dbt, session):\n"
        f"    time.sleep({sleep_s})\n"
        "    said = os.environ.get('WARM_TEST_WORD', '')\n"
        "    return session.sql(\n"
        "        f\"select {os.getpid()} as pid, {os.getppid()} as ppid, '{said}' as word, '{os.getcwd()}' as cwd\"\n"
        "    )\n"
    )
    (root / "models" / "broken.sql").write_text("select * from a_table_nobody_made\n")
    return root


def dbt(root: Path, *args: str, env: dict[str, str], **kw) -> subprocess.Popen:
    # relative paths: the dbt process must work in the client's folder
    return subprocess.Popen(
        [str(CLIENT), *args, "--project-dir", ".", "--profiles-dir", "."],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def who(root: Path) -> tuple[int, int, str, str]:
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("select pid, ppid, word, cwd from who").fetchone()


def server_pid() -> int:
    return warm_dbt._blocks[-1].process.pid


def environment(**more: str) -> dict[str, str]:
    return {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", **more}


@pytest.mark.parametrize("word", ["river", "ĉiutage"])
def test_dbt_forked_from_the_server_runs_as_the_client_asked(tmp_path, word, monkeypatch):
    root = project(tmp_path / "p")
    before = os.environ.get(warm_dbt.ENV)
    if word == "river":  # a server warmed at its start from the project's saved parse (see the test below)
        parsed = dbt(root, "parse", env={k: v for k, v in environment().items() if k != warm_dbt.ENV})
        assert parsed.wait(timeout=300) == 0 and (root / "target" / "partial_parse.msgpack").exists()
        monkeypatch.setattr(warm_dbt, "PROJECT", root)
    with warm_dbt.warm_dbt_server(now=True):
        env = environment(WARM_TEST_WORD=word)
        ok = dbt(root, "run", "--select", "who", env=env)
        out, _ = ok.communicate(timeout=300)
        assert ok.returncode == 0, out
        pid, ppid, said, cwd = who(root)
        assert ppid == server_pid()  # forked from the server, not started by the client
        assert pid != ok.pid
        assert (said, cwd) == (word, str(root))  # the client's environment and folder
        assert "Completed successfully" in out  # dbt's own output, on the client's stdout

        failed = dbt(root, "run", "--select", "broken", env=env)
        out, _ = failed.communicate(timeout=300)
        assert failed.returncode == 1  # dbt's exit status for a failed model, as `dbt` gives it
        assert "a_table_nobody_made" in out
        assert os.environ[warm_dbt.ENV].endswith("socket")
    assert os.environ.get(warm_dbt.ENV) == before  # put back after the block


def test_without_a_server_the_client_becomes_dbt_itself(tmp_path):
    root = project(tmp_path / "p")
    env = {k: v for k, v in environment(WARM_TEST_WORD="alone").items() if k != warm_dbt.ENV}
    proc = dbt(root, "run", "--select", "who", env=env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert who(root)[:3] == (proc.pid, os.getpid(), "alone")  # exec'd: the client's own process ran dbt
    # a socket nobody listens on (a server that died): the same
    proc = dbt(root, "run", "--select", "broken", env={**env, warm_dbt.ENV: str(tmp_path / "gone.socket")})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "a_table_nobody_made" in out


def _dbt_pid(root: Path, started: float) -> int:
    """The pid of the server's child working in `root`, waiting for it to start."""
    while time.monotonic() - started < 120:
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and f"PPid:\t{server_pid()}\n" in (p / "status").read_text():
                    if (p / "cwd").resolve() == root:
                        return int(p.name)
            except OSError:
                continue
        time.sleep(0.2)
    raise AssertionError("the dbt child never started")


def _gone(pid: int, within_s: float) -> bool:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_signal_to_the_client_stops_the_dbt_child(tmp_path, how):
    root = project(tmp_path / "p", sleep_s=120)
    with warm_dbt.warm_dbt_server(now=True):
        started = time.monotonic()
        proc = dbt(root, "run", "--select", "who", env=environment())
        child = _dbt_pid(root, started)
        time.sleep(1)
        proc.send_signal(getattr(signal, how))
        proc.communicate(timeout=60)
        assert proc.returncode != 0
        # SIGINT is passed on (dagster-dbt cancels a step so); after SIGKILL the child sees its client gone
        assert _gone(child, 30), f"the dbt child {child} still runs after {how} to its client"
        assert time.monotonic() - started < 100  # not by the model's end


def test_the_server_ends_with_its_block_and_leaves_nothing(tmp_path):
    with warm_dbt.warm_dbt_server(now=True):
        server = warm_dbt._blocks[-1]
        pid, folder = server.process.pid, Path(server.folder)
        assert (folder / "socket").exists()  # listening when started (before dbt is imported)
    assert server.process is None and not folder.exists()
    assert _gone(pid, 10)
    with warm_dbt.warm_dbt_server():  # not started until asked
        assert warm_dbt._blocks[-1].process is None
        assert warm_dbt.start() and warm_dbt._blocks[-1].process is not None
    assert not warm_dbt.start()  # outside a block there is none


def test_outside_a_block_a_dbt_step_starts_a_server_for_the_rest_of_its_process(tmp_path):
    # what a run launched by the Dagster UI or daemon, or a Celery worker, does: its first dbt step starts
    # one, its later dbt steps fork from it, and it ends with the process
    root = project(tmp_path / "p")
    script = (
        "import os, subprocess, sys\n"
        "from orchestration import warm_dbt\n"
        "assert warm_dbt.start(anywhere=True) and warm_dbt.start(anywhere=True)\n"
        "server = warm_dbt._for_process[0]\n"
        f"subprocess.run([{str(CLIENT)!r}, 'run', '--select', 'who', '--project-dir', '.', '--profiles-dir', '.'],"
        f" cwd={str(root)!r}, check=True, capture_output=True)\n"
        "print(server.process.pid, server.folder)\n"
    )
    env = {k: v for k, v in environment().items() if k != warm_dbt.ENV}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    pid, folder = out.stdout.split()
    assert who(root)[1] == int(pid)  # the dbt process was the server's child
    assert _gone(int(pid), 10) and not Path(folder).exists()


def _cpu_s(pid: int) -> float:
    """A live process's own user + system time (not its children's), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_dbt_childrens_cpu_time_is_counted_in_the_process_that_started_the_server(tmp_path):
    # `make bench` (wait4) and anyone using getrusage count a run's CPU from its reaped descendants: the
    # server reaps its dbt children, so their time reaches the run through the server
    import resource

    root = project(tmp_path / "p")
    (root / "models" / "spin.py").write_text(
        "import time\n\n"
        "def model(dbt, session):\n"
        "    end = time.process_time() + 3\n"
        "    while time.process_time() < end:\n"
        "        pass\n"
        "    return session.sql(f'select {time.process_time()}::double as cpu_s')\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with warm_dbt.warm_dbt_server(now=True):
        proc = dbt(root, "run", "--select", "spin", env=environment())
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        server_self = _cpu_s(server_pid())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        child = con.execute("select cpu_s from spin").fetchone()[0]  # the dbt child's CPU when its model ended
    counted = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert child >= 3 and counted >= server_self + child - 0.05, (counted, server_self, child)


def test_old_dbt_artifact_folders_are_pruned_per_step(tmp_path: Path) -> None:
    """dagster-dbt makes a target folder per dbt invocation; prune_targets keeps each step's newest, and
    never one younger than its minimum age (another process's dbt may be writing it)."""
    from orchestration.dbt_build import prune_targets

    now = time.time()
    steps = ("dbt_daily", "dbt_from_facts")
    for step in steps:
        for i in range(6):
            folder = tmp_path / f"{step}-{i:07d}-{i:06d}x"
            (folder / "compiled").mkdir(parents=True)
            age = 7200 + 60 * i if i else 10  # the newest is seconds old, the others hours
            os.utime(folder, (now - age, now - age))
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "a-b-c").mkdir()  # not an invocation folder's name: kept

    def names(paths) -> list[str]:
        return sorted(p.name for p in paths)

    # one step's only
    assert names(prune_targets(tmp_path, "dbt_daily", keep=5, min_age_s=3600)) == ["dbt_daily-0000005-000005x"]
    assert (tmp_path / "dbt_from_facts-0000005-000005x").exists()
    gone = prune_targets(tmp_path, keep=2, min_age_s=3600)
    assert names(gone) == sorted(f"{s}-{i:07d}-{i:06d}x" for s in steps for i in range(2, 6 if s != "dbt_daily" else 5))
    assert not any(p.exists() for p in gone)
    assert (tmp_path / "manifest.json").exists() and (tmp_path / "a-b-c").exists()
    # keeping none: the hours-old folders go, the seconds-old one stays
    assert names(prune_targets(tmp_path, keep=0, min_age_s=3600)) == [f"{s}-0000001-000001x" for s in steps]
    assert names(tmp_path.glob("dbt_*")) == [f"{s}-0000000-000000x" for s in steps]


WARM_CHECK = """
import json, sys
from pathlib import Path
from orchestration import warm_dbt
warm_dbt._import_dbt()
from dbt.cli.main import dbtRunner
from dbt.contracts.graph.manifest import Manifest
from dbt.contracts.graph.nodes import ModelNode
from dbt.contracts.project import Project

saved = Path(sys.argv[1]) / "target" / "partial_parse.msgpack"
def compiled():  # mashumaro compiles a (de)serializer on its first call and puts it on the class
    return (Manifest.__dict__["from_msgpack"].__func__, ModelNode.__dict__["from_dict"].__func__)
cut = saved.with_name("cut.msgpack")
cut.write_bytes(saved.read_bytes()[:200])
before = compiled()
assert not warm_dbt._warm_manifest(cut) and not warm_dbt._warm_manifest(saved.with_name("none.msgpack"))
warm_dbt._warm_schemas()
assert warm_dbt._warm_manifest(saved)
warmed = compiled()
res = dbtRunner().invoke(["parse", "--project-dir", sys.argv[1], "--profiles-dir", sys.argv[1],
                          "--target-path", sys.argv[2], "--quiet"])
assert res.success, res.exception
print(json.dumps({"schemas": Project.json_schema.cache_info().currsize,
                  "changed_by_warm": [a is not b for a, b in zip(before, warmed)],
                  "changed_by_parse": [a is not b for a, b in zip(warmed, compiled())]}))
"""


def test_the_server_warms_dbts_caches_from_the_saved_parse_without_changing_what_dbt_does(tmp_path):
    """What the server compiles once (orchestration/warm_dbt.py, _warm_schemas and _warm_manifest) is what
    a dbt process would compile itself, and a parse after it gives the same project as dbt alone does."""
    root = project(tmp_path / "p")
    plain = subprocess.run(
        [warm_dbt.real_dbt(), "parse", "--project-dir", ".", "--profiles-dir", ".", "--quiet"],
        cwd=root,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert plain.returncode == 0, plain.stdout + plain.stderr
    out = subprocess.run(
        [sys.executable, "-c", WARM_CHECK, str(root), str(tmp_path / "after_warm")],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["schemas"] >= 7  # the project, profile, selector, ... schemas
    assert seen["changed_by_warm"] == [True, True]  # the manifest's and a model's (de)serializers compiled
    assert seen["changed_by_parse"] == [False, False]  # and dbt's parse used them rather than compiling again

    def nodes(target: Path) -> dict:
        manifest = json.loads((target / "manifest.json").read_text())
        return {k: (v["checksum"], v["config"], v["depends_on"]) for k, v in manifest["nodes"].items()}

    assert nodes(tmp_path / "after_warm") == nodes(root / "target") and len(nodes(root / "target")) == 2


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, "/work/target"),
        ([], {"DBT_TARGET_PATH": "target/dbt_daily-1"}, "/work/target/dbt_daily-1"),
        (["--project-dir", "/p", "--target-path", "t"], {"DBT_TARGET_PATH": "x"}, "/p/t"),
    ],
)
def test_the_saved_parse_a_dbt_request_reads(args, env, expected):
    got = warm_dbt._partial_parse_file({"args": ["build", *args], "env": env, "cwd": "/work"})
    assert got == Path(expected) / "partial_parse.msgpack"


def test_a_python_model_in_a_warm_dbt_process_finds_pandas_imported(tmp_path):
    """The daily build's Python model (int_district_coordinates) imports pandas, ~1.3 s in every dbt
    process: the server imports it once, and its children have it; dbt itself does not."""
    root = project(tmp_path / "p")
    (root / "models" / "probe.py").write_text(
        "import sys\n\n"
        "PRELOADED = 'pandas' in sys.modules  # before anything here imports it\n\n"
        "def model(dbt, session):\n"
        "    return session.sql(f'select {PRELOADED} as preloaded')\n"
    )

    def preloaded() -> bool:
        with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
            return con.execute("select preloaded from probe").fetchone()[0]

    alone = dbt(root, "run", "--select", "probe", env={k: v for k, v in environment().items() if k != warm_dbt.ENV})
    out, _ = alone.communicate(timeout=300)
    assert alone.returncode == 0, out
    assert preloaded() is False
    with warm_dbt.warm_dbt_server(now=True):
        warm = dbt(root, "run", "--select", "probe", env=environment())
        out, _ = warm.communicate(timeout=300)
        assert warm.returncode == 0, out
    assert preloaded() is True
