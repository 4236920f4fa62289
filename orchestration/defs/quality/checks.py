"""Great Expectations gates as Dagster asset checks, one per guarded asset.

Every bronze table is checked against its suite file when there is one, else against a suite built
from city.yaml (its primary-key columns exist and are never null). Conformed facts and marts are
checked against their suite files. All checks block: a failed gate stops everything downstream of
the asset in that run, so nothing reaches publication past a failed gate. The check's metadata lists
each failed expectation with what was observed and a sample of offending rows.
"""

import functools
import json

import dagster as dg

from orchestration.city import city, dbt_project_dir
from orchestration.config import Source
from orchestration.lake import bronze_uri
from orchestration.quality import (
    SuiteOutcome,
    delta_batches,
    duckdb_batches,
    load_suite,
    suite_path,
    validate_batches,
)

GUARDED_LAYERS = ("conformed", "marts")


@functools.cache
def substitutions() -> dict[str, list]:
    import csv

    with open(dbt_project_dir() / "seeds" / "city_districts.csv", newline="", encoding="utf-8") as f:
        codes = sorted({row["code"] for row in csv.DictReader(f)})
    return {"district_codes": codes, "area_ids": [*codes, "CITY"]}


def bronze_suite(source: Source) -> dict:
    path = suite_path(["bronze", source.agency, source.name])
    if path.exists():
        return load_suite(path, substitutions())
    exps = [{"type": "expect_column_to_exist", "kwargs": {"column": c}} for c in source.primary_key]
    exps += [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": c}} for c in source.primary_key]
    return {"name": f"bronze.{source.agency}.{source.name} (from city.yaml)", "expectations": exps}


def check_result(outcome: SuiteOutcome) -> dg.AssetCheckResult:
    failed = outcome.failed
    return dg.AssetCheckResult(
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{outcome.suite}: "
        + ("all expectations met" if not failed else "; ".join(e.describe() for e in failed)),
        metadata={
            "suite": outcome.suite,
            "rows_validated": outcome.rows,
            "expectations": len(outcome.expectations),
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
        },
    )


def _sample_md(outcome: SuiteOutcome) -> str:
    lines = []
    for e in outcome.failed:
        lines.append(f"**{e.describe()}**\n")
        lines.extend(f"- `{json.dumps(row, default=str)[:500]}`" for row in e.sample)
    return "\n".join(lines) or "no failures"


def bronze_check(source: Source) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=dg.AssetKey(["bronze", source.agency, source.name]),
        name="gx_suite",
        blocking=True,
        description="Great Expectations suite of this bronze table",
    )
    def _check() -> dg.AssetCheckResult:
        uri = bronze_uri(city(), source.agency, source.name)
        return check_result(validate_batches(bronze_suite(source), delta_batches(uri)))

    return _check


def warehouse_check(layer: str, model: str) -> dg.AssetChecksDefinition:
    key = [layer, model]

    @dg.asset_check(
        asset=dg.AssetKey(key),
        name="gx_suite",
        blocking=True,
        description=f"Great Expectations suite {'.'.join(key)}.json",
    )
    def _check() -> dg.AssetCheckResult:
        suite = load_suite(suite_path(key), substitutions())
        return check_result(validate_batches(suite, duckdb_batches(city().state_dir / "warehouse.duckdb", model)))

    return _check


def _guarded_models() -> list[tuple[str, str]]:
    from orchestration.quality import EXPECTATIONS_DIR

    found = []
    for path in sorted(EXPECTATIONS_DIR.glob("*.json")):
        parts = path.stem.split(".")
        if len(parts) == 2 and parts[0] in GUARDED_LAYERS:
            found.append((parts[0], parts[1]))
    return found


defs = dg.Definitions(
    asset_checks=[bronze_check(s) for s in city().sources]
    + [warehouse_check(layer, model) for layer, model in _guarded_models()]
)
