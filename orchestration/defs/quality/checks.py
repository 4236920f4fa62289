"""Great Expectations gates as Dagster asset checks, one per guarded asset (check name `gx_suite`).

- Bronze: every table, against expectations/bronze.<agency>.<source>.json when there is one, else a
  suite built from city.yaml (primary-key columns present and never null). Row-level expectations
  already split the load at ingestion (bad rows went to quarantine, named after the expectation); the
  check judges the last load (the rows it wrote to bronze, and those it quarantined) against their
  `mostly`, so a batch that is mostly bad fails the gate.
  Freshness (`freshness: {column, max_delay_hours}` on a source) and volume (`volume: {max_drop}`,
  default 0.5: the table may not shrink by more than half since the last validated run) are added from
  city.yaml.
- Intermediate, conformed and marts: every model with a suite file (e.g. the share of records held
  back for an unknown district, value ranges, accepted values, referential integrity to districts);
  a daily model's suite on the days its last build replaced, the others on the whole table.
- Volume on the whole table's rows, whatever the slice; every suite executed in DuckDB (see
  orchestration/quality.py and docs/quality.md).

All checks block: a failed gate stops everything downstream of its asset in that run, so publication
does not happen and the published marts and catalog stay as they were. The metadata lists each failed
expectation with what was observed and a sample of offending rows, and links the GX Data Docs page.
"""

import csv
import functools
import json
from pathlib import Path

import dagster as dg
import pandas as pd

from orchestration.city import city, dbt_project_dir
from orchestration.city_schema import Volume, default
from orchestration.config import EARLIEST, Source
from orchestration.docs_site import docs_url
from orchestration.lake import bronze_uri, quarantine_uri, read_table
from orchestration.quality import (
    ExpectationOutcome,
    SuiteOutcome,
    VolumeState,
    bronze_suite,
    data_docs,
    fill,
    guarded_models,
    min_rows,
    suite_path,
    validate_load,
    validate_model,
)
from orchestration.workers import WAREHOUSE_QUEUE, queue_tags

#: volume.max_drop when a source or suite does not set it
DEFAULT_MAX_DROP = default(Volume, "max_drop")


@functools.cache
def substitutions() -> dict[str, list]:
    with open(dbt_project_dir() / "seeds" / "city_districts.csv", newline="", encoding="utf-8") as f:
        codes = sorted({row["code"] for row in csv.DictReader(f)})
    return {"district_codes": codes, "area_ids": [*codes, "CITY"], "district_codes_unassigned": [*codes, "UNASSIGNED"]}


def _quality_dir() -> Path:
    return city().state_dir / "quality"


def with_volume(suite: dict, key: list[str], max_drop: float) -> tuple[dict, VolumeState]:
    state = VolumeState(_quality_dir() / "volume" / (".".join(key) + ".json"))
    suite = {
        **suite,
        "expectations": [
            *suite["expectations"],
            {
                "type": "expect_table_row_count_to_be_between",
                "kwargs": {"min_value": min_rows(state.previous(), max_drop), "max_drop": max_drop},
            },
        ],
    }
    return suite, state


def load_gate(context: dg.AssetCheckExecutionContext, key: list[str], suite: dict) -> list[ExpectationOutcome]:
    """This run's load judged against the row-level expectations' `mostly`: the bronze asset records how
    many rows it put through the suite and how many each expectation rejected (they went to quarantine)."""
    row_level = [e for e in suite["expectations"] if e["type"].startswith("expect_column_values_")]
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    if not row_level or event is None or event.run_id != context.run.run_id:
        return []  # nothing was loaded in this run: the table-level suite above still ran
    gate = event.asset_materialization.metadata.get("row_gate")
    stats = gate.value if gate is not None else {"rows": 0, "failed": {}}
    total = int(stats.get("rows", 0))
    failed = stats.get("failed", {})
    # offending rows for the UI, read only when this load rejected any
    q = read_table(quarantine_uri(city(), key[1], key[2]), columns=["reason", "record", "_batch"]) if failed else None
    held = q.to_pandas() if q is not None else pd.DataFrame(columns=["reason", "record", "_batch"])
    outcomes = []
    for exp in row_level:
        reason = f"failed {exp['type']}({exp['kwargs'].get('column')})"
        bad = int(failed.get(reason, 0))
        mostly = float(exp["kwargs"].get("mostly", 1.0))
        rows = held[(held["reason"] == reason) & (held["_batch"] == context.run.run_id)]["record"].head(5)
        outcomes.append(
            ExpectationOutcome(
                exp["type"],
                {**exp["kwargs"], "scope": "this run's load"},
                success=total == 0 or bad <= (1 - mostly) * total + 1e-9,
                element_count=total,
                unexpected_count=bad,
                sample=[json.loads(r) for r in rows],
                is_map=True,
            )
        )
    return outcomes


def check_result(outcome: SuiteOutcome, key: list[str], run_id: str, volume: VolumeState) -> dg.AssetCheckResult:
    failed = outcome.failed
    docs = data_docs(outcome, _quality_dir() / "data_docs" / ".".join(key) / f"{run_id}.html")
    if outcome.success:
        volume.record(outcome.rows if outcome.table_rows is None else outcome.table_rows)
    metadata = {
        "suite": outcome.suite,
        "rows_validated": outcome.rows,
        "rows_in_table": outcome.table_rows if outcome.table_rows is not None else outcome.rows,
        "rows_scope": outcome.scope or "the whole table",
        "expectations": len(outcome.expectations),
        "expectations_failed": len(failed),
        "failed_expectations": dg.MetadataValue.json(
            [
                {
                    "expectation": e.type,
                    "kwargs": e.kwargs,
                    "unexpected_count": e.unexpected_count,
                    "element_count": e.element_count,
                    "observed_value": e.observed_value,
                    "sample": e.sample,
                }
                for e in failed
            ]
        ),
        "offending_rows_sample": dg.MetadataValue.md(_sample_md(outcome)),
    }
    # served by the docs server `citylake dev` starts (a browser does not follow file:// from the UI)
    metadata["data_docs"] = dg.MetadataValue.url(docs_url(f"data-docs/{docs.parent.name}/{docs.name}"))
    if docs.is_file():  # a failed validation's page; a passing one is rendered when first served
        metadata["data_docs_path"] = dg.MetadataValue.path(str(docs))
    return dg.AssetCheckResult(
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{outcome.suite}: "
        + ("all expectations met" if not failed else "; ".join(e.describe() for e in failed)),
        metadata=metadata,
    )


def _sample_md(outcome: SuiteOutcome) -> str:
    lines = []
    for e in outcome.failed:
        lines.append(f"**{e.describe()}**\n")
        lines.extend(f"- `{json.dumps(row, default=str)[:500]}`" for row in e.sample)
    return "\n".join(lines) or "no failures"


def bronze_check(source: Source) -> dg.AssetChecksDefinition:
    key = ["bronze", source.agency, source.name]

    @dg.asset_check(
        asset=dg.AssetKey(key),
        name="gx_suite",
        blocking=True,
        description="Great Expectations gate of this bronze table (row-level, freshness, volume)",
    )
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        max_drop = float((source.get("volume") or {}).get("max_drop", DEFAULT_MAX_DROP))
        suite, volume = with_volume(fill(bronze_suite(source), substitutions(), ".".join(key)), key, max_drop)
        event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
        fresh = (source.get("freshness") or {}).get("column")
        # the last load: this run's when the asset was materialized in it (the rows it wrote, not the table)
        batch = event.run_id if event is not None else None
        outcome = validate_load(suite, bronze_uri(city(), source.agency, source.name), batch, fresh)
        outcome.expectations.extend(load_gate(context, key, suite))
        return check_result(outcome, key, context.run.run_id, volume)

    return _check


def built_window(context: dg.AssetCheckExecutionContext, key: list[str]) -> tuple[str, str] | None:
    """The days the last build of a daily model replaced (`partition_range` of its materialization, see
    defs/transform), None for a model rebuilt whole or a window of every day."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    entry = event.asset_materialization.metadata.get("partition_range") if event is not None else None
    if entry is None:
        return None
    first, last = str(entry.value).split("..")
    return None if (first <= EARLIEST.isoformat() and last >= "9999-12-31") else (first, last)


def warehouse_check(layer: str, model: str) -> dg.AssetChecksDefinition:
    key = [layer, model]

    @dg.asset_check(
        asset=dg.AssetKey(key),
        name="gx_suite",
        blocking=True,
        description=f"Great Expectations suite expectations/{'.'.join(key)}.json",
        # it reads the DuckDB warehouse: with Celery workers, on the one worker process that owns it; and in
        # the warehouse pool with the dbt steps, so that another run's dbt never finds it holding the file
        op_tags=queue_tags(WAREHOUSE_QUEUE),
        pool="warehouse",
    )
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        raw = json.loads(suite_path(key).read_text(encoding="utf-8"))
        max_drop = float(raw.get("meta", {}).get("max_drop", DEFAULT_MAX_DROP))
        suite, volume = with_volume(fill(raw, substitutions(), ".".join(key)), key, max_drop)
        outcome = validate_model(suite, city().state_dir / "warehouse.duckdb", model, built_window(context, key))
        return check_result(outcome, key, context.run.run_id, volume)

    return _check


defs = dg.Definitions(
    asset_checks=[bronze_check(s) for s in city().sources] + [warehouse_check(lyr, m) for lyr, m in guarded_models()]
)
