"""CITYLAKE_DUCKDB_MEMORY_LIMIT bounds the pipeline's warehouse connections: dbt's (through the profile
citylake renders for the city) and the model gates' read-only ones. Unset, they are bounded at
DEFAULT_MEMORY_LIMIT (1GB); `none` leaves DuckDB's own default (80 % of the machine's memory)."""

from __future__ import annotations

import duckdb
import yaml

from orchestration.config import load_config
from orchestration.dbt_build import DEFAULT_MEMORY_LIMIT, MEMORY_LIMIT_ENV, build_project
from orchestration.quality import warehouse_when_free
from tests.connectors_support import city_yaml


def _limit(con: duckdb.DuckDBPyConnection) -> str:
    return con.execute("select current_setting('memory_limit')").fetchall()[0][0]


def test_the_limit_reaches_dbt_and_the_gates_with_a_default_and_none_for_duckdbs_own(tmp_path, monkeypatch):
    drop = {"kind": "files", "path": "./drop/*.csv", "format": "csv", "primary_key": ["id"]}
    cfg = load_config(city_yaml(tmp_path / "city", {"police": {"crashes": drop}}))
    warehouse = cfg.state_dir / "warehouse.duckdb"
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    duckdb.connect(str(warehouse)).close()
    default = duckdb.connect(":memory:")
    unbounded = _limit(default)
    default.close()

    monkeypatch.setenv(MEMORY_LIMIT_ENV, "none")
    profile = yaml.safe_load((build_project(cfg) / "profiles.yml").read_text())
    assert "memory_limit" not in profile["citylake"]["outputs"]["city"]["settings"]
    with warehouse_when_free(warehouse) as con:
        assert _limit(con) == unbounded

    monkeypatch.delenv(MEMORY_LIMIT_ENV)
    assert DEFAULT_MEMORY_LIMIT == "1GB"
    profile = yaml.safe_load((build_project(cfg) / "profiles.yml").read_text())
    assert profile["citylake"]["outputs"]["city"]["settings"]["memory_limit"] == "1GB"
    with warehouse_when_free(warehouse) as con:
        assert _limit(con).startswith("953"), _limit(con)  # 1 GB is 953.6 MiB

    monkeypatch.setenv(MEMORY_LIMIT_ENV, "300MB")
    profile = yaml.safe_load((build_project(cfg) / "profiles.yml").read_text())
    assert profile["citylake"]["outputs"]["city"]["settings"]["memory_limit"] == "300MB"
    with warehouse_when_free(warehouse) as con:
        bounded = _limit(con)
    assert bounded != unbounded and bounded.startswith("286"), bounded  # 300 MB is 286.1 MiB
