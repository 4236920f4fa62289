"""The city this code location serves: city.yaml loaded once per process, and its dbt project."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from orchestration.config import CityConfig, load_config


@functools.cache
def city() -> CityConfig:
    """The validated city.yaml ($CITYLAKE_CONFIG, else ./city.yaml)."""
    return load_config()


@functools.cache
def dbt_project_dir() -> Path:
    """The city's rendered dbt project (parsed; its manifest is what dagster-dbt loads)."""
    from orchestration.dbt_build import build_project

    return build_project(city())


def dagster_home(cfg: CityConfig) -> Path:
    """$DAGSTER_HOME, else <state_dir>/dagster, with telemetry off (no network at run time)."""
    home = Path(os.environ.get("DAGSTER_HOME") or cfg.state_dir / "dagster")
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "dagster.yaml"
    if not conf.exists():
        conf.write_text("telemetry:\n  enabled: false\n")
    return home
