"""Publication: every mart as a Delta table under <lake>/marts/, and the analyst catalog.

Runs only when the marts' blocking quality gates passed in the same run; a failure anywhere here
leaves the previously published catalog in place.
"""

import json

import dagster as dg

from orchestration.city import city, dbt_project_dir
from orchestration.publish import (
    build_catalog,
    dbt_docs,
    now_utc,
    publish_marts,
    quarantine_table,
    read_warehouse,
)


def _mart_models() -> list[str]:
    manifest = json.loads((dbt_project_dir() / "target" / "manifest.json").read_text())
    return sorted(
        n["name"] for n in manifest["nodes"].values() if n["resource_type"] == "model" and n["fqn"][1] == "marts"
    )


MARTS = _mart_models()
#: conformed tables analysts also get in the catalog, for joins and for seeing what was held back
CATALOG_EXTRAS = ["dim_district", "quarantine_records"]


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            ["published", m],
            deps=[["marts", m]],
            group_name="published",
            kinds={"delta"},
            description=f"The published Delta table of marts/{m} (<lake>/marts/{m}).",
        )
        for m in MARTS
    ]
    + [
        dg.AssetSpec(
            ["published", "analyst_catalog"],
            group_name="published",
            kinds={"duckdb"},
            deps=[["published", m] for m in MARTS] + [["conformed", t] for t in CATALOG_EXTRAS],
            description="The read-only DuckDB catalog analysts query: every mart, the districts and "
            "the quarantine, swapped in whole.",
        ),
    ],
    pool="warehouse",
)
def publish(context: dg.AssetExecutionContext):
    """Write every mart to Delta, then rebuild and swap the analyst catalog."""
    cfg = city()
    tables = read_warehouse(cfg, MARTS + CATALOG_EXTRAS)
    published = publish_marts(cfg, {m: tables[m] for m in MARTS})
    for p in published:
        yield dg.MaterializeResult(
            asset_key=["published", p.name],
            metadata={
                "dagster/row_count": p.rows,
                "delta_version": p.delta_version,
                "uri": f"{cfg.lake_root}/marts/{p.name}",
            },
        )
    catalog_tables = {m: tables[m] for m in MARTS}
    catalog_tables["dim_district"] = tables["dim_district"]
    catalog_tables["quarantine"] = quarantine_table(cfg, tables["quarantine_records"])
    info = {
        "city": cfg.name,
        "published_at": now_utc(),
        "run_id": context.run_id,
        "delta_versions": {p.name: p.delta_version for p in published},
    }
    path = build_catalog(
        cfg, catalog_tables, dbt_docs(dbt_project_dir() / "target" / "manifest.json", list(catalog_tables)), info
    )
    yield dg.MaterializeResult(
        asset_key=["published", "analyst_catalog"],
        metadata={
            "path": str(path),
            "tables": ", ".join(sorted(catalog_tables)),
            "quarantined_rows": catalog_tables["quarantine"].num_rows,
        },
    )


defs = dg.Definitions(assets=[publish])
