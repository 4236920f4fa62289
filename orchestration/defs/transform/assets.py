"""dbt (dbt-duckdb): staging -> intermediate -> conformed -> marts, one asset per model.

Asset keys follow the layer folders: staging/stg_..., intermediate/int_..., conformed/fct_...,
marts/indicators; seeds are reference/<seed>. dbt sources are the bronze assets, so lineage runs
from each agency system to the indicators. dbt tests become asset checks.
"""

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from orchestration.city import dbt_project_dir
from orchestration.dbt_build import dbt_env


class CityTranslator(DagsterDbtTranslator):
    """Names dbt nodes after their layer folder and maps dbt sources onto the bronze assets."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        props = dbt_resource_props
        if props["resource_type"] == "source":
            return dg.AssetKey(["bronze", props["source_name"].removeprefix("bronze_"), props["name"]])
        if props["resource_type"] == "seed":
            return dg.AssetKey(["reference", props["name"]])
        return dg.AssetKey([layer(props), props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        props = dbt_resource_props
        return "reference" if props["resource_type"] == "seed" else layer(props)


def layer(props: Mapping[str, Any]) -> str:
    fqn = props.get("fqn") or []
    return fqn[1] if len(fqn) > 2 else "models"


dbt_env()
project = DbtProject(project_dir=dbt_project_dir(), profiles_dir=dbt_project_dir())


@dbt_assets(manifest=project.manifest_path, project=project, dagster_dbt_translator=CityTranslator(), pool="warehouse")
def city_dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    """Build the selected dbt models, seeds and tests in the city's warehouse."""
    yield from dbt.cli(["build"], context=context).stream()


# the dbt of this environment, whether or not the venv is on PATH
DBT = str(Path(sys.executable).with_name("dbt"))
defs = dg.Definitions(
    assets=[city_dbt_models],
    resources={"dbt": DbtCliResource(project_dir=project, profiles_dir=str(dbt_project_dir()), dbt_executable=DBT)},
)
