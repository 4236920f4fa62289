"""The city this code location serves: city.yaml loaded once per process, and its dbt project."""

from __future__ import annotations

import functools
import os
import shutil
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


INSTANCE_TEMPLATE = Path(__file__).resolve().parent / "instance" / "dagster.yaml"


def dagster_home(cfg: CityConfig) -> Path:
    """$DAGSTER_HOME, else <state_dir>/dagster; a new one gets instance/dagster.yaml (telemetry off,
    concurrency pools). An existing dagster.yaml is the operator's and is left alone."""
    home = Path(os.environ.get("DAGSTER_HOME") or cfg.state_dir / "dagster")
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "dagster.yaml"
    if not conf.exists():
        shutil.copyfile(INSTANCE_TEMPLATE, conf)
    return home


def domain_owners(cfg: CityConfig, domain: str | None) -> list[str]:
    """The `owner:` of every source feeding an entity of `domain` (all owners for None: what spans
    domains answers to every source's owner)."""
    from orchestration.entities import domain_of

    return sorted(
        {
            s.get("owner")
            for s in cfg.sources
            if s.get("owner") and (domain is None or (s.feeds and domain_of(s.feeds) == domain))
        }
    )
