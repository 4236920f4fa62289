"""Publication: every mart as a Delta table under <lake>/marts/, the analyst catalog and its report.

Runs only when the marts' blocking quality gates passed in the same run; a failure anywhere here
leaves the previously published catalog and report in place. When city.yaml has
`sinks: {postgres: ...}`, a further asset copies the published marts into PostgreSQL for BI tools.
"""

import json

import dagster as dg

from orchestration.city import city, dbt_project_dir
from orchestration.docs_site import docs_url
from orchestration.lake import mart_uri
from orchestration.publish import (
    REPORT_NAME,
    build_catalog,
    dbt_docs,
    now_utc,
    publish_marts,
    quarantine_summary,
    quarantine_table,
    read_published,
    read_warehouse,
)
from orchestration.quality import guarded_models
from orchestration.report_html import Gate, render
from orchestration.workers import WAREHOUSE_QUEUE, queue_tags


def _mart_models() -> list[str]:
    manifest = json.loads((dbt_project_dir() / "target" / "manifest.json").read_text())
    return sorted(
        n["name"] for n in manifest["nodes"].values() if n["resource_type"] == "model" and n["fqn"][1] == "marts"
    )


MARTS = _mart_models()
#: conformed tables analysts also get in the catalog, for joins and for seeing what was held back
CATALOG_EXTRAS = ["dim_district", "quarantine_records"]


def _gates(context: dg.AssetExecutionContext) -> list[Gate]:
    """The latest outcome of every check on the marts (the gates publication depends on)."""
    # the full graph, not the run's: a run that selects only publication still reports every gate
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.asset_check_keys if k.asset_key.path[0] == "marts"]
    gates = []
    for key in sorted(keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        record = context.instance.get_latest_asset_check_evaluation_record(key)
        # a concurrent run may have the check planned but not yet evaluated: no outcome yet
        passed = getattr(record.evaluation, "passed", None) if record else None
        status = "not run" if passed is None else ("passed" if passed else "failed")
        gates.append(Gate(key.asset_key.to_user_string(), key.name, status))
    return gates


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
            # every gated model is a dependency, so a failed blocking gate anywhere stops publication
            deps=[["published", m] for m in MARTS]
            + [["conformed", t] for t in CATALOG_EXTRAS]
            + [[layer, model] for layer, model in guarded_models() if model not in CATALOG_EXTRAS],
            description="The read-only DuckDB catalog analysts query (every mart, the districts, the quarantine "
            "and its summary), swapped in whole, with the indicator report (HTML) beside it.",
        ),
    ],
    pool="warehouse",
    op_tags=queue_tags(WAREHOUSE_QUEUE),  # it reads the warehouse: on the worker that owns it
)
def publish(context: dg.AssetExecutionContext):
    """Write every mart to Delta, then rebuild the analyst catalog from Delta, render the report, swap both in."""
    cfg = city()
    tables = read_warehouse(cfg, MARTS + CATALOG_EXTRAS)
    published = publish_marts(cfg, {m: tables[m] for m in MARTS})
    for p in published:
        yield dg.MaterializeResult(
            asset_key=["published", p.name],
            metadata={
                "dagster/row_count": p.rows,
                "delta_version": p.delta_version,
                "uri": mart_uri(cfg, p.name),
            },
        )
    catalog_tables = read_published(cfg, published)
    catalog_tables["dim_district"] = tables["dim_district"]
    catalog_tables["quarantine"] = quarantine_table(cfg, tables["quarantine_records"])
    catalog_tables["quarantine_summary"] = quarantine_summary(catalog_tables["quarantine"])
    info = {
        "city": cfg.name,
        "published_at": now_utc(),
        "run_id": context.run_id,
        "delta_versions": {p.name: p.delta_version for p in published},
    }
    gates = _gates(context)
    report = cfg.catalog_path.with_name(REPORT_NAME)
    path = build_catalog(
        cfg.catalog_path,
        catalog_tables,
        dbt_docs(dbt_project_dir() / "target" / "manifest.json", list(catalog_tables)),
        info,
        render=lambda con: {report: render(con, cfg.name, gates)},
    )
    yield dg.MaterializeResult(
        asset_key=["published", "analyst_catalog"],
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            # served by the docs server `citylake dev` starts (a browser does not follow file:// from the UI)
            "report": dg.MetadataValue.url(docs_url(f"report/{REPORT_NAME}")),
            "report_path": dg.MetadataValue.path(str(report)),
            "tables": ", ".join(sorted(catalog_tables)),
            "quarantined_rows": catalog_tables["quarantine"].num_rows,
            "quality_gates": f"{sum(g.status == 'passed' for g in gates)} of {len(gates)} passed",
        },
    )


def _postgres_sink() -> list[dg.AssetsDefinition]:
    """The PostgreSQL copy of the published marts, only when city.yaml configures `sinks.postgres`."""
    sink = city().sinks.get("postgres")
    if not sink:
        return []

    @dg.asset(
        key=["published", "postgres"],
        group_name="published",
        kinds={"postgres"},
        deps=[["published", m] for m in MARTS] + [["published", "analyst_catalog"]],
        pool="warehouse",
        op_tags=queue_tags(WAREHOUSE_QUEUE),
    )
    def postgres(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Every published mart, the indicator catalogue and the quarantine summary, swapped into a
        PostgreSQL schema in one transaction, readable by the configured read-only role."""
        from orchestration.sinks.postgres import publish_to_postgres

        cfg = city()
        result = publish_to_postgres(cfg.catalog_path, sink)
        context.log.info(f"published {len(result.tables)} tables to PostgreSQL schema {result.schema}")
        if result.stale_schemas_left:
            context.log.warning(
                f"left {', '.join(result.stale_schemas_left)} in place: a reader still uses it; the next "
                "publication drops it"
            )
        return dg.MaterializeResult(
            metadata={
                "schema": result.schema,
                "tables": ", ".join(result.tables),
                "rows": sum(result.rows.values()),
                "reader_role": result.reader_role or "",
            }
        )

    return [postgres]


defs = dg.Definitions(assets=[publish, *_postgres_sink()])
