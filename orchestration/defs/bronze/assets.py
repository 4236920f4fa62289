"""One asset per agency source in city.yaml: bronze/<agency>/<source>, a Delta table in the lake.

Adding a source to city.yaml adds its asset; there is no code to write.
"""

from pathlib import Path

import dagster as dg
import duckdb

from orchestration import warm_dbt
from orchestration.city import city
from orchestration.config import ConfigError, Source
from orchestration.entities import domain_of
from orchestration.ingest import ingest
from orchestration.lake import bronze_uri, open_table
from orchestration.progress import progress
from orchestration.workers import agency_queue, queue_tags


def table_metadata(uri: str, rows: int = 5) -> dict[str, dg.MetadataValue]:
    """What the UI shows of a Delta table: its schema and its first rows."""
    table = open_table(uri)
    if table is None:
        return {}
    dataset = table.to_pyarrow_dataset()
    schema = dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in dataset.schema])
    # the first rows of one file; DuckDB reads them without decoding a whole row group (a bronze file of a
    # 2 GB drop holds millions of rows). Object storage: schema only.
    fragment = next(dataset.get_fragments(), None)
    head = []
    if fragment is not None and "://" not in uri:
        with duckdb.connect() as con:
            path = str(Path(uri) / fragment.path)
            values = con.execute("select * from read_parquet(?) limit ?", [path, rows]).fetchall()
            head = [dict(zip([d[0] for d in con.description], v, strict=True)) for v in values]
    cells = [[str(v)[:60].replace("|", "\\|").replace("\n", " ") for v in r.values()] for r in head]
    lines = ["| " + " | ".join(dataset.schema.names) + " |", "|" + " --- |" * len(dataset.schema.names)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return {
        "dagster/column_schema": dg.MetadataValue.table_schema(schema),
        "preview": dg.MetadataValue.md("\n".join(lines)),
    }


def bronze_asset(source: Source) -> dg.AssetsDefinition:
    @dg.asset(
        key=["bronze", source.agency, source.name],
        group_name="bronze",
        kinds={"delta", source.kind},
        owners=[source.get("owner")] if source.get("owner") else None,
        tags={"domain": (domain_of(source.feeds) if source.feeds else None) or "shared"},
        description=f"{source.where} ({source.kind}) landed as received, plus ingestion metadata. "
        f"Rows that cannot be loaded go to quarantine/{source.agency}/{source.name}.",
        metadata={"primary_key": list(source.primary_key), "uri": bronze_uri(city(), source.agency, source.name)},
        pool="lake_writes",
        # with Celery workers, the agency's own queue: its consumers' slots cap the loads hitting its system
        op_tags=queue_tags(agency_queue(source.agency)),
        # agency systems fail transiently; the HTTP connector also retries each request itself
        retry_policy=dg.RetryPolicy(
            max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
        ),
    )
    def _bronze(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        try:
            result = ingest(city(), source, context.run_id, log=progress(context.log))
        except ConfigError as exc:
            # city.yaml or the environment is wrong (a ${VAR} not set, ...): no retry can mend it, so the
            # step fails at once with the error rather than after two retries' backoff
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        if result.versions_committed or result.quarantined:
            # something new: this run's dbt steps will follow; `citylake run`'s warm dbt server imports dbt
            # meanwhile, while the other loads run (orchestration/warm_dbt.py; nothing outside that command)
            warm_dbt.start()
        return dg.MaterializeResult(
            metadata={
                **table_metadata(bronze_uri(city(), source.agency, source.name)),
                "dagster/row_count": result.row_count,
                "rows_read": result.rows_read,
                "rows_written": result.rows_written,
                "rows_quarantined": result.quarantined,
                "files_loaded": len(result.files_loaded),
                "cursor_before": str(result.cursor_before),
                "columns_added": ", ".join(result.columns_added) or "none",
                "columns_missing": ", ".join(result.columns_missing) or "none",
                "delta_version": result.delta_version,
                "delta_versions_committed": result.versions_committed,
                # read by the bronze gate (defs/quality): this load judged against each expectation's `mostly`
                "row_gate": dg.MetadataValue.json({"rows": result.rows_gated, "failed": result.gate_failures}),
            }
        )

    return _bronze


defs = dg.Definitions(assets=[bronze_asset(s) for s in city().sources])
