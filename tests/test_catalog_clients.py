"""The published catalog opens in the DuckDB clients analysts have: the DuckDB CLI from PyPI (the
`duckdb-cli` package `make install` puts in .venv/bin) and a DuckDB 1.x Python package in an
environment of its own, neither with citylake. DuckDB 2.x writes a storage format 1.x refuses, so the
catalog is written in an older one (publish.CATALOG_STORAGE_VERSION)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.conftest import BIN, CityRun, unavailable

#: the oldest DuckDB that reads the catalog's storage version (v1.2.0)
DUCKDB_1X = "1.2.2"
QUERY = (
    "select count(*) as n, count(distinct area_id) as areas, round(sum(value), 6) as total "
    "from indicators where period_grain = 'month'"
)


def expected(catalog: Path) -> dict:
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        n, areas, total = con.execute(QUERY).fetchone()
    finally:
        con.close()
    return {"n": n, "areas": areas, "total": float(total)}


def client(*argv: str | Path, cwd: Path) -> str:
    """What a client command prints; it must succeed."""
    out = subprocess.run([str(a) for a in argv], check=False, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_duckdb_cli_from_the_venv_opens_the_catalog_as_the_readme_prints_it(city_run: CityRun) -> None:
    cli = BIN / "duckdb"
    if not cli.exists():
        unavailable(f"no DuckDB CLI at {cli}: `make install` installs the duckdb-cli package")
    version = subprocess.run([str(cli), "-version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("v1."), version  # a 1.x client: the point of the storage version
    (got,) = json.loads(client(cli, "-readonly", "-json", city_run.catalog, QUERY, cwd=city_run.root))
    want = expected(city_run.catalog)
    assert want["n"] > 0 and want["areas"] > 1
    assert {"n": got["n"], "areas": got["areas"], "total": float(got["total"])} == want
    # the table comments (the catalog's docs) come through too
    comment = "select comment from duckdb_tables() where table_name = 'quarantine_summary'"
    out = client(cli, "-readonly", "-list", "-noheader", city_run.catalog, comment, cwd=city_run.root)
    assert out.startswith("Held-back records counted")


@pytest.fixture(scope="session")
def duckdb1_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python environment of its own with DuckDB 1.x (from the package index pip is configured with)."""
    venv = tmp_path_factory.mktemp("duckdb1") / "venv"
    base = getattr(sys, "_base_executable", None) or "python3"
    made = subprocess.run([base, "-m", "venv", str(venv)], check=False, capture_output=True, text=True, timeout=300)
    if made.returncode != 0:
        unavailable(f"cannot create a venv for DuckDB {DUCKDB_1X}: {made.stderr.strip()[-500:]}")
    pip = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"duckdb=={DUCKDB_1X}",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        env={k: v for k, v in os.environ.items() if not k.startswith("PIP_CONSTRAINT")},
    )
    if pip.returncode != 0:
        unavailable(f"pip cannot install duckdb=={DUCKDB_1X}: {pip.stderr.strip()[-500:]}")
    return venv / "bin" / "python"


def test_a_duckdb_1x_python_in_its_own_environment_opens_the_catalog(city_run: CityRun, duckdb1_python: Path) -> None:
    script = (
        "import duckdb, json, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
        f"n, areas, total = con.execute({QUERY!r}).fetchone(); "
        "print(json.dumps({'version': duckdb.__version__, 'n': n, 'areas': areas, 'total': float(total), "
        "'tables': sorted(t for (t,) in con.execute('select table_name from duckdb_tables()').fetchall())}))"
    )
    got = json.loads(client(duckdb1_python, "-I", "-c", script, city_run.catalog, cwd=city_run.root))
    assert got.pop("version") == DUCKDB_1X
    tables = got.pop("tables")
    assert {"indicators", "quarantine", "quarantine_summary", "dim_district", "_published"} <= set(tables)
    assert got == expected(city_run.catalog)
