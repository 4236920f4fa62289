"""`dbt docs generate` describes every column of every conformed and mart model (what analysts read in
dbt docs and in the catalog's comments), checked on the test city's rendered project and warehouse."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, CityRun

DOCUMENTED_LAYERS = ("models/conformed/", "models/marts/")


@pytest.fixture(scope="module")
def docs(city_run: CityRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """manifest.json and catalog.json of `dbt docs generate` over the test city's dbt project."""
    project = city_run.state / "dbt"
    # a target folder of its own, so the project's manifest (what Dagster loads) is left as it is
    target = tmp_path_factory.mktemp("dbt_docs")
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DBT_NO_VERSION_CHECK": "true"}
    proc = subprocess.run(
        [str(BIN / "dbt"), "docs", "generate", "--project-dir", str(project), "--profiles-dir", str(project)]
        + ["--target-path", str(target)],
        capture_output=True,
        text=True,
        env=env,
        cwd=project,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"dbt docs generate failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return tuple(json.loads((target / name).read_text()) for name in ("manifest.json", "catalog.json"))


def _documented_models(manifest: dict) -> dict[str, dict]:
    return {
        uid: node
        for uid, node in manifest["nodes"].items()
        if node["resource_type"] == "model" and node["original_file_path"].startswith(DOCUMENTED_LAYERS)
    }


def test_every_conformed_and_mart_model_is_in_the_catalog(docs: tuple[dict, dict]) -> None:
    manifest, catalog = docs
    models = _documented_models(manifest)
    assert len(models) >= 20, f"expected the conformed and mart models, found {sorted(models)}"
    missing = sorted(uid for uid in models if uid not in catalog["nodes"])
    assert not missing, f"built models missing from catalog.json: {missing}"
    undescribed = sorted(node["name"] for node in models.values() if not node.get("description", "").strip())
    assert not undescribed, f"models without a description in their _*__models.yml: {undescribed}"


def test_every_column_of_conformed_and_mart_models_is_described(docs: tuple[dict, dict]) -> None:
    manifest, catalog = docs
    undescribed = []
    for uid, node in _documented_models(manifest).items():
        described = {
            name.lower(): (col.get("description") or "").strip() for name, col in node.get("columns", {}).items()
        }
        for column in catalog["nodes"][uid]["columns"]:
            if not described.get(column.lower()):
                undescribed.append(f"{node['name']}.{column}")
    assert not undescribed, (
        f"{len(undescribed)} columns without a description (add them to "
        f"dbt_project/models/<layer>/_<layer>__models.yml): {sorted(undescribed)}"
    )


def test_docs_describe_the_models_by_their_yml(docs: tuple[dict, dict]) -> None:
    """The descriptions come from the property files, e.g. the indicators' value column."""
    manifest, _ = docs
    indicators = manifest["nodes"]["model.citylake.indicators"]
    assert indicators["columns"]["value"]["description"] == "The indicator's value."
    assert Path(indicators["original_file_path"]).name == "indicators.sql"
