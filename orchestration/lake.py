"""Delta tables in the lake: where they live and the few write patterns citylake uses.

Every write is idempotent: it overwrites exactly what it owns (a predicate), upserts by key (merge),
or replaces the whole table. delta-rs commits are atomic, so a crash leaves the last committed version.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from orchestration.config import CityConfig


def storage_options(uri: str) -> dict[str, str] | None:
    """Object-store options from the environment (AWS_* variables, AWS_ENDPOINT_URL for S3-compatibles)."""
    if not uri.startswith("s3://"):
        return None
    opts = {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["AWS_ENDPOINT_URL"] = endpoint
        opts["AWS_ALLOW_HTTP"] = "true"
    return opts


def bronze_uri(cfg: CityConfig, agency: str, source: str) -> str:
    return cfg.lake_path("bronze", agency, source)


def quarantine_uri(cfg: CityConfig, agency: str, source: str) -> str:
    return cfg.lake_path("quarantine", agency, source)


def mart_uri(cfg: CityConfig, mart: str) -> str:
    return cfg.lake_path("marts", mart)


def open_table(uri: str) -> DeltaTable | None:
    """The Delta table at uri, or None when nothing was committed there yet."""
    try:
        return DeltaTable(uri, storage_options=storage_options(uri))
    except TableNotFoundError:
        return None


def read_table(uri: str, columns: Sequence[str] | None = None) -> pa.Table | None:
    dt = open_table(uri)
    if dt is None:
        return None
    return dt.to_pyarrow_dataset().to_table(columns=list(columns) if columns else None)


def _sql_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def overwrite_where(uri: str, data: pa.Table, column: str, value: str) -> None:
    """Replace the rows whose `column` equals `value` with `data` (the unit a load owns, e.g. one file)."""
    dt = open_table(uri)
    if dt is None:
        write_deltalake(uri, data, mode="append", storage_options=storage_options(uri))
        return
    _evolve_schema(uri, dt, data)
    write_deltalake(
        uri, data, mode="overwrite", predicate=f"{column} = {_sql_literal(value)}", storage_options=storage_options(uri)
    )


def replace(uri: str, data: pa.Table) -> None:
    """Replace the whole table (a full snapshot load)."""
    write_deltalake(uri, data, mode="overwrite", schema_mode="overwrite", storage_options=storage_options(uri))


def upsert(uri: str, data: pa.Table, keys: Sequence[str]) -> None:
    """Insert new keys, update existing ones: rows updated at the source update bronze."""
    dt = open_table(uri)
    if dt is None:
        write_deltalake(uri, data, mode="append", storage_options=storage_options(uri))
        return
    _evolve_schema(uri, dt, data)
    # keys are never null here: rows without a key were quarantined before the merge
    predicate = " and ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    (
        dt.merge(data, predicate=predicate, source_alias="s", target_alias="t", merge_schema=True)
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )


def _evolve_schema(uri: str, dt: DeltaTable, data: pa.Table) -> None:
    """Add columns the new data brings (schema drift) before a predicate write, which cannot merge schemas."""
    existing = set(dt.schema().to_arrow().names)
    new = [f for f in data.schema if f.name not in existing]
    if new:
        write_deltalake(
            uri,
            pa.Table.from_batches([], schema=pa.schema(new)).cast(pa.schema(new)),
            mode="append",
            schema_mode="merge",
            storage_options=storage_options(uri),
        )
