"""dbt (dbt-duckdb): staging -> intermediate -> conformed -> marts, one asset per model.

Asset keys follow the layer folders: intermediate/int_..., conformed/fct_..., marts/indicators;
seeds are reference/<seed>. Staging models are ephemeral (compiled into the per-entity union), so
lineage runs from each bronze asset straight to it and on to the indicators. dbt tests become asset
checks.

Three dbt steps, in this order: the reference data the daily models read (seeds, districts,
categories); the daily-partitioned models (dbt tag `daily`: the per-entity intermediate
models, the conformed facts), which get the run's partition window as vars and replace only those
days; and everything computed from the facts (dimensions of dates and agencies, quarantine, marts,
indicators), rebuilt whole. A backfill of a range of days runs as one dbt build over the range.
"""

import contextlib
import functools
import importlib.metadata
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from packaging import version

from orchestration import warm_dbt
from orchestration.city import city, dbt_project_dir, domain_owners
from orchestration.dbt_build import KEPT_TARGETS, bronze_views, dbt_env, prune_targets
from orchestration.dbt_selection import import_dagster_dbt
from orchestration.entities import domain_of
from orchestration.partitions import EARLIEST, daily_partitions, window_vars
from orchestration.progress import counted_models
from orchestration.workers import WAREHOUSE_QUEUE, queue_tags

import_dagster_dbt()  # without dbt-core in this process (orchestration/dbt_selection.py: ~2 s off every start)
from dagster_dbt import DagsterDbtTranslator, DbtCliInvocation, DbtCliResource, DbtProject, dbt_assets  # noqa: E402


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

    def get_description(self, dbt_resource_props: Mapping[str, Any]) -> str:
        """The model's description from its property file, never its SQL (dagster-dbt's default appends
        the raw SQL, which drowns the description; the UI shows the code under the asset's definition)."""
        props = dbt_resource_props
        return (props.get("description") or "").strip() or (
            f"dbt {props['resource_type']} {props['name']} ({props.get('original_file_path', '')})"
        )

    def get_tags(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, str]:
        """dbt's tags plus `domain` (air, energy, mobility, safety, service_requests, waste, or shared)."""
        return {**super().get_tags(dbt_resource_props), "domain": domain_of(dbt_resource_props["name"]) or "shared"}

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> Sequence[str] | None:
        """Owners from dbt `meta` (`owner`/`owners`, dagster-dbt's default), else the `owner:` in city.yaml
        of the sources feeding the model's domain."""
        return super().get_owners(dbt_resource_props) or domain_owners(city(), domain_of(dbt_resource_props["name"]))


def layer(props: Mapping[str, Any]) -> str:
    fqn = props.get("fqn") or []
    return fqn[1] if len(fqn) > 2 else "models"


dbt_env()
project = DbtProject(project_dir=dbt_project_dir(), profiles_dir=dbt_project_dir())
warm_dbt.PROJECT = Path(project.project_dir)  # (the run's warm dbt server reads its saved parse at its start)


DAILY = "tag:daily"
# with Celery workers, dbt runs on the one worker process that owns the DuckDB warehouse
common = {
    "manifest": project.manifest_path,
    "project": project,
    "dagster_dbt_translator": CityTranslator(),
    "op_tags": queue_tags(WAREHOUSE_QUEUE),
}


@dbt_assets(name="dbt_reference", select=f"+{DAILY}", exclude=DAILY, pool="warehouse", **common)
def dbt_reference(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    """Build the seeds and dimensions the daily models read, with their tests. Rebuilt whole
    (`--full-refresh`): a seed table left by an earlier build (another CSV, other types) never lingers."""
    yield from counted_models(context, dbt.cli(["build", "--full-refresh"], context=context).stream())


PARTITIONS = daily_partitions(city())


@dbt_assets(
    name="dbt_daily",
    select=DAILY,
    partitions_def=PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run() if PARTITIONS else None,
    pool="warehouse",
    **common,
)
def dbt_daily(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    """Rebuild the days of the run's partition window (one dbt build for a whole range); every day
    for a city without partitions.

    A build of everything (the window is all the data there is: a first run, `--rebuild`, a changed
    definition, a city without partitions) replaces each daily table whole (`--full-refresh`: the table
    built aside and swapped in, as a first build does) instead of deleting and inserting every day
    through a temporary copy, which wrote each row twice (the air tables of the reference city at scale
    10: 23 s of dbt against 16 s); and a row of a day no longer in the data does not stay behind."""
    every = {"min_date": EARLIEST.isoformat(), "max_date": "9999-12-31", "read_all": "true"}
    days = window_vars(context) if PARTITIONS else every
    window = f"{days['min_date']}..{days['max_date']}"
    # the window goes in dbt's environment, not its --vars (see citylake_window_bound)
    bronze_views(city())  # the daily models read bronze through the warehouse's views of the Delta tables
    with window_environment(days):
        build = dbt.cli(["build", *(["--full-refresh"] if days["read_all"] == "true" else [])], context=context)
    for event in counted_models(context, build.stream()):
        yield (
            event.with_metadata({**event.metadata, "partition_range": window})
            if isinstance(event, dg.Output)
            else event
        )


@contextlib.contextmanager
def window_environment(days: Mapping[str, str]) -> Iterator[None]:
    """CITYLAKE_MIN_DATE / CITYLAKE_MAX_DATE / CITYLAKE_READ_ALL set while the dbt process is started (it
    copies the environment), then put back."""
    names = {f"CITYLAKE_{k.upper()}": v for k, v in days.items()}
    before = {n: os.environ.get(n) for n in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for n, v in before.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


@dbt_assets(name="dbt_from_facts", exclude=f"+{DAILY}", pool="warehouse", **common)
def dbt_from_facts(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    """Build everything computed from the facts: marts, indicators, quarantine, date and agency dimensions."""
    yield from counted_models(context, dbt.cli(["build"], context=context).stream())


class CityDbtResource(DbtCliResource):
    """dagster-dbt's resource without two costs of each dbt step that citylake has no use for (together
    a few seconds of CPU per step, three steps a run): it is told dbt's version by the installed
    dbt-core package instead of running `dbt --version` (a Python process importing dbt), and it opens
    no dbt adapter in the run's process (dagster-dbt loads dbt's macros there for `fetch_row_counts` and
    `fetch_column_metadata`, which citylake does not call: its gates count rows)."""

    @functools.cached_property
    def _cli_version(self) -> version.Version:
        return version.parse(importlib.metadata.version("dbt-core"))

    def _initialize_dbt_core_adapter(self, args: Sequence[str]) -> None:
        return None

    def cli(self, args: Sequence[str], **kwargs: Any) -> DbtCliInvocation:
        """dagster-dbt's `cli`, with the run's warm dbt server started first (orchestration/warm_dbt.py): the
        `citylake run` block's, else one for this process (a run launched by the UI or daemon, a worker);
        and the step's old dbt artifact folders pruned (dbt_build.prune_targets)."""
        warm_dbt.start(anywhere=True)
        context = kwargs.get("context")
        if context is not None:  # (DBT_TARGET_PATH: where dagster-dbt puts its invocation folders, named
            # after the step; one fewer is kept, for the folder this invocation adds)
            target = Path(self.project_dir) / os.getenv("DBT_TARGET_PATH", "target")
            prune_targets(target, context.op_execution_context.op.name, keep=KEPT_TARGETS - 1)
        return super().cli(args, **kwargs)


# the dbt of this environment, whether or not the venv is on PATH, forked from the run's warm dbt server when
# there is one (orchestration/warm_dbt.py)
DBT = warm_dbt.executable()
defs = dg.Definitions(
    assets=[dbt_reference, dbt_daily, dbt_from_facts],
    resources={"dbt": CityDbtResource(project_dir=project, profiles_dir=str(dbt_project_dir()), dbt_executable=DBT)},
)
