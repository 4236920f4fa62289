"""Shared fixtures: a small reference city, run end to end through the real `citylake` command.

The pipeline runs in a subprocess, exactly as a user runs it, against a config of its own (a copy of
the reference city's cities/riverton/city.yaml pointing at a generated city in a temporary folder), so the tests never
touch the developer's ./lake.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
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


def unavailable(reason: str) -> None:
    """Skip a test whose real client or service is missing here, saying why; under CI=true that fails it."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
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


def citylake(*args: str, config: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
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
