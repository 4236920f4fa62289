"""Shared fixtures: a small reference city, run end to end through the real `citylake` command.

The pipeline runs in a subprocess, exactly as a user runs it, against a config of its own (a copy of
the reference city's cities/riverton/city.yaml pointing at a generated city in a temporary folder), so the tests never
touch the developer's ./lake.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: small but with every habit: two vendors, a DST change (9 March), partial first month
TEST_CITY = {"scale": 0.4, "days": 60, "start": date(2025, 1, 20), "seed": 11}
#: the repository's city.yaml hashes 311 emails with CITYLAKE_PII_KEY: the tests' key, unless one is exported
os.environ.setdefault("CITYLAKE_PII_KEY", "citylake-tests-pii-key-not-a-secret")


#: rough minutes of the slowest groups on the 2-core CI machine: with `make test` (pytest-xdist, one worker
#: per core) they start first, so no worker is left with a long group at the end
SLOW_GROUPS = {
    "city_run": 10,
    "test_up_to_date.py": 7,
    "test_window_pruning.py": 5,
    "test_random_cities.py": 5,
    "test_dedupe.py": 5,
    "test_quality_gates.py": 4,
    "test_ui.py": 4,
    "test_hostile_input.py": 3,
    "test_operations.py": 3,
    "test_workers.py": 2,
    "test_nyc_city.py": 2,
    "test_small_city.py": 2,
    "test_connectors_cli.py": 2,
    "test_secrets.py": 2,
    "test_gates_duckdb.py": 2,
    "test_lake_s3.py": 2,
}


def _group(item: pytest.Item) -> str:
    return "city_run" if "city_run" in item.fixturenames else item.path.name


def _groups_file(testrunuid: str) -> Path:
    return Path(tempfile.gettempdir()) / f"citylake-test-groups-{testrunuid}.json"


def pytest_configure(config: pytest.Config) -> None:
    # the controller names the run, so that it finds the groups its workers write (see below)
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        config.option.testrunuid = config.option.testrunuid or uuid.uuid4().hex


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slowest groups first (a stable sort: the rest keep their order); in an xdist worker, each
    test's group is written for the controller's scheduler."""
    items.sort(key=lambda item: -SLOW_GROUPS.get(_group(item), 0))
    if hasattr(config, "workerinput"):
        path = _groups_file(config.workerinput["testrunuid"])
        tmp = path.with_suffix(f".{config.workerinput['workerid']}")
        tmp.write_text(json.dumps({item.nodeid: _group(item) for item in items}))
        tmp.replace(path)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`make test` runs `pytest -n N`: tests go to workers a group at a time, a group being a test file
    (its module fixtures run once) or every test using the session's `city_run` (so the reference city
    is run once), slow groups first (xdist's own `--dist loadgroup` cannot do this with pytest 9: it
    renames node ids, which pytest 9 no longer allows)."""
    from xdist.scheduler import LoadScopeScheduling

    groups: dict[str, str] = {}

    class Groups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if not groups:
                path = _groups_file(config.option.testrunuid)
                groups.update(json.loads(path.read_text()))
                path.unlink(missing_ok=True)
            return groups.get(nodeid) or nodeid.split("::", 1)[0]

    config.option.loadscopereorder = False
    return Groups(config, log)


_SUITE_STARTED = time.time()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After a whole-suite run (no paths given: `make test`), record its duration for `make bench` in
    test-output/suite.json; not in the xdist workers, and not for a run of some files only."""
    config = session.config
    if hasattr(config, "workerinput") or config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return
    stats = config.pluginmanager.get_plugin("terminalreporter").stats
    record = {
        "wall_s": round(time.time() - _SUITE_STARTED, 1),
        "workers": getattr(config.option, "numprocesses", None) or 1,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **{
            k: len([r for r in stats.get(k, []) if getattr(r, "when", "call") == "call" or k != "passed"])
            for k in ("passed", "failed", "skipped", "error")
        },
    }
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    (out / "suite.json").write_text(json.dumps(record, indent=1))


#: CI=true: a test whose service or client is missing fails instead of skipping (see `unavailable`)
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip a test whose real client or service is missing here, saying why; under CI=true that fails it."""
    if CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_city_config(root: Path, city_dir: Path, lake: Path, partitioned: bool = True) -> Path:
    """The reference city's city.yaml (and its bronze suites), pointed at `city_dir` and `lake`, with a free
    port for Open311. `partitioned=False` drops its `partitions:` key (every run rebuilds every day): for
    tests about something else, it saves the Dagster bookkeeping of ~60 days x 22 daily assets per run."""
    from orchestration.reference_city.config import write_config

    def edit(cfg: dict) -> None:
        if not partitioned:
            cfg.pop("partitions", None)

    return write_config(root, city_dir, lake, root / "state", free_port(), edit)


def citylake(*args: str, config: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "CITYLAKE_CONFIG": str(config)}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.run(
        [str(BIN / "citylake"), *args, "--config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=config.parent,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"citylake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class CityRun:
    root: Path
    config: Path
    city_dir: Path
    lake: Path
    state: Path
    #: what `citylake run` printed (stdout, then stderr)
    output: str = ""

    @property
    def catalog(self) -> Path:
        return self.lake / "catalog.duckdb"

    @property
    def warehouse(self) -> Path:
        return self.state / "warehouse.duckdb"


@pytest.fixture(scope="session")
def city_run(tmp_path_factory: pytest.TempPathFactory) -> CityRun:
    """The small reference city, generated and run once through `citylake run`."""
    from orchestration.reference_city import generate

    root = tmp_path_factory.mktemp("citylake")
    city_dir = root / "riverton"
    generate(city_dir, **TEST_CITY)
    run = CityRun(root, write_city_config(root, city_dir, root / "lake"), city_dir, root / "lake", root / "state")
    # up to 20 min: on a shared machine under load the small city's first run has taken over 10
    proc = citylake("run", config=run.config, timeout=1200)
    run.output = proc.stdout + proc.stderr
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    shutil.copyfile(run.catalog, out / "catalog.duckdb")
    return run
