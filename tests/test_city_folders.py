"""The core knows no city: each source's bronze suite comes from its own city's folder, so a city whose
source is named like one of the reference city's does not inherit Riverton's suite."""

from __future__ import annotations

from pathlib import Path

from orchestration.quality import EXPECTATIONS_DIR, bronze_suite
from tests.connectors_support import one_source

REPO = Path(__file__).resolve().parent.parent


def test_the_shared_expectations_hold_no_suite_of_one_city():
    assert EXPECTATIONS_DIR == REPO / "expectations"
    assert not sorted(EXPECTATIONS_DIR.glob("bronze.*.json"))
    assert len(sorted((REPO / "cities" / "riverton" / "expectations").glob("bronze.*.json"))) == 7


def test_a_source_named_like_riverton_s_gets_no_riverton_suite(tmp_path):
    spec = {"kind": "files", "path": "./drop/*.csv", "format": "csv", "primary_key": ["stop", "day"]}
    _, src = one_source(tmp_path, "transport", "ridership", spec)
    suite = bronze_suite(src)
    columns = {e["kwargs"].get("column") for e in suite["expectations"]}
    assert columns == {"stop", "day"}  # Riverton's suite would ask for zone_code, service_date, ...


def test_a_city_s_own_suite_is_read_from_its_folder(tmp_path):
    spec = {"kind": "files", "path": "./drop/*.csv", "format": "csv", "primary_key": ["stop"]}
    (tmp_path / "expectations").mkdir()
    (tmp_path / "expectations" / "bronze.transport.ridership.json").write_text(
        '{"name": "bronze.transport.ridership", "expectations": ['
        '{"type": "expect_column_values_to_match_regex", "kwargs": {"column": "stop", "regex": "^S"}}]}'
    )
    _, src = one_source(tmp_path, "transport", "ridership", spec)
    types = [e["type"] for e in bronze_suite(src)["expectations"]]
    assert types == ["expect_column_values_to_match_regex", "expect_column_values_to_not_be_null"]


def _generated_staging(config: Path) -> dict[str, str]:
    from orchestration.config import load_config
    from orchestration.dbt_build import prunable, render_staging, staging_model_name

    cfg = load_config(config)
    return {f"{staging_model_name(s)}.sql": render_staging(s, prunable(cfg, s)) for s in cfg.sources if s.feeds}


def _committed(city: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in (REPO / "cities" / city / "generated").glob("*.sql")}


def test_the_committed_staging_models_of_riverton_are_current(tmp_path):
    """cities/riverton/generated/ holds what citylake renders from Riverton's city.yaml (regenerate with
    `citylake generate` then `python -m orchestration.dbt_build --write-generated cities/riverton/city.yaml`)."""
    from orchestration.reference_city import generate
    from tests.conftest import TEST_CITY, write_city_config

    generate(tmp_path / "riverton", **TEST_CITY)
    config = write_city_config(tmp_path, tmp_path / "riverton", tmp_path / "lake")
    assert _generated_staging(config) == _committed("riverton")
    assert len(_committed("riverton")) == 7


def test_the_committed_staging_models_of_nyc_are_current():
    import pytest

    if not (REPO.parent / "shared" / "data" / "nyc").exists():
        pytest.skip("the real NYC data is not beside the repository (../shared/data/nyc)")
    assert _generated_staging(REPO / "cities" / "nyc" / "city.yaml") == _committed("nyc")
    assert len(_committed("nyc")) == 13


def test_a_hand_written_staging_model_in_the_city_folder_takes_over(tmp_path):
    from orchestration.dbt_build import _render

    spec = {
        "kind": "files",
        "path": "./drop/*.csv",
        "format": "csv",
        "primary_key": ["id"],
        "feeds": "road_collisions",
        "columns": {"collision_id": "id", "accident_at": "at"},
    }
    cfg, _ = one_source(tmp_path, "police", "crashes", spec)
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "stg_police__crashes.sql").write_text("-- the city's own\nselect 1 as x\n")
    _render(cfg, tmp_path / "out", tmp_path / "out")
    assert (
        (tmp_path / "out" / "models" / "staging" / "police" / "stg_police__crashes.sql")
        .read_text()
        .startswith("-- the city's own")
    )
    assert not (tmp_path / "out" / "models" / "staging" / "_generated" / "stg_police__crashes.sql").exists()


def test_the_dbt_project_parses_on_its_own(tmp_path):
    """dbt_project/ as checked in is a valid dbt project (a city with no sources): its union models are
    the empty ones citylake renders for an entity nothing feeds, kept current here."""
    import shutil
    import subprocess
    import sys

    from orchestration.dbt_build import GENERATED_UNIONS, PROJECT_DIR, render_union
    from orchestration.entities import ENTITIES

    for name, entity in ENTITIES.items():
        committed = (PROJECT_DIR / GENERATED_UNIONS / f"int_{name}__unioned.sql").read_text()
        assert committed == render_union(entity, [], None)
    project = tmp_path / "dbt_project"
    shutil.copytree(PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs"))
    dbt = Path(sys.executable).with_name("dbt")
    env = {"DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "PATH": str(dbt.parent), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(dbt), "parse", "--project-dir", str(project), "--profiles-dir", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (project / "target" / "manifest.json").exists()
