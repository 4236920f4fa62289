"""Delta tables in the lake: where they live and the few write patterns citylake uses.

Every write is idempotent: it overwrites exactly what it owns (a predicate), upserts by key (merge),
or replaces the whole table. delta-rs commits are atomic, so a crash leaves the last committed version.
A merge or predicate overwrite that loses the commit race to another writer of the same table (Delta's
optimistic concurrency: "a concurrent transaction added new data") is redone against the new version,
a few times with backoff; both writers' rows land.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

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
    """The table at uri (None before its first commit); `columns` reads only those that exist."""
    dt = open_table(uri)
    if dt is None:
        return None
    dataset = dt.to_pyarrow_dataset()
    if columns is not None:
        columns = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=list(columns) if columns is not None else None)


def rows_where(table: DeltaTable, column: str, value: str) -> pa.Table:
    """The rows of `table` whose text `column` equals `value`, read by delta-rs's own engine (files skipped
    by their statistics). Not through `to_pyarrow_dataset()`: the files a merge or delete rewrites hold
    their text columns as string_view, for which pyarrow's dataset filters have no kernel ("Function
    'equal' has no kernel matching input types (string, string_view)", delta-rs #4579), so a filter
    pushed into such a dataset (DuckDB pushes `where` clauses into a registered one) fails on any table
    a load has upserted into."""
    from deltalake import QueryBuilder

    sql = f'select * from t where "{column}" = {_sql_literal(value)}'
    return pa.table(QueryBuilder().register("t", table).execute(sql))


#: times a write that lost a commit race is redone before the error goes up (the asset's retry policy is next)
CONFLICT_RETRIES = 5
T = TypeVar("T")


class ConcurrentWriteError(RuntimeError):
    """Another writer kept committing to the same table; nothing of this write was committed. Retryable."""


def _redo_on_conflict(uri: str, write: Callable[[], T]) -> T:
    """`write()` (which reads the table afresh); redone when another writer committed first."""
    tries = 1
    while True:
        try:
            return write()
        except CommitFailedError as exc:
            if tries > CONFLICT_RETRIES:
                raise ConcurrentWriteError(
                    f"{uri}: another writer committed to this Delta table during each of {tries} tries; "
                    f"nothing of this write was committed, rerun the load ({exc})"
                ) from exc
            logging.getLogger(__name__).warning(
                "%s: another writer committed first (%s); redoing the write on the new version", uri, exc
            )
            time.sleep(random.uniform(0.05, 0.1) * 2**tries)
            tries += 1


def _sql_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def overwrite_where(uri: str, data: pa.Table | pa.RecordBatchReader, column: str, value: str) -> None:
    """Replace the rows whose `column` equals `value` with `data` (the unit a load owns, e.g. one file), in one
    commit; `data` may be a stream of batches (a big file), written without holding it in memory."""
    dt = open_table(uri)
    if dt is None:
        write_deltalake(uri, data, mode="append", storage_options=storage_options(uri))
        return
    _evolve_schema(uri, dt, data)
    _redo_on_conflict(
        uri,
        lambda: write_deltalake(
            uri,
            data,
            mode="overwrite",
            predicate=f"{column} = {_sql_literal(value)}",
            storage_options=storage_options(uri),
        ),
    )


def replace(uri: str, data: pa.Table) -> None:
    """Replace the whole table (a full snapshot load)."""
    write_deltalake(uri, data, mode="overwrite", schema_mode="overwrite", storage_options=storage_options(uri))


def schema(uri: str) -> pa.Schema | None:
    """The Arrow schema of the Delta table at uri (None before its first commit)."""
    dt = open_table(uri)
    return None if dt is None else pa.schema(dt.schema().to_arrow())


def _changed(columns: Sequence[str]) -> str:
    # a matched row is rewritten only when a compared value differs, so an unchanged rerun commits nothing
    return " or ".join(f"(t.`{c}` is distinct from s.`{c}`)" for c in columns) or "false"


def upsert(uri: str, data: pa.Table, keys: Sequence[str], compare: Sequence[str]) -> int:
    """Insert new keys, update rows whose `compare` columns changed; returns the rows written.

    delta-rs commits nothing when a merge changes nothing, so a rerun over unchanged rows leaves the
    table at its version.
    """
    return _merge(uri, data, keys, compare, delete_missing=False)


def sync(uri: str, data: pa.Table, keys: Sequence[str], compare: Sequence[str]) -> int:
    """Make the table equal `data` (a full snapshot) in one commit, touching only rows that differ.

    Returns the rows inserted, updated or deleted; 0 means nothing was committed.
    """
    return _merge(uri, data, keys, compare, delete_missing=True)


def _merge(uri: str, data: pa.Table, keys: Sequence[str], compare: Sequence[str], delete_missing: bool) -> int:
    """One merge commit keyed on `keys`: insert new keys, update rows whose `compare` columns changed
    and, for a snapshot, delete keys no longer delivered. Returns the rows written (0: no commit)."""
    dt = open_table(uri)
    if dt is None:
        write_deltalake(uri, data, mode="append", storage_options=storage_options(uri))
        return data.num_rows
    _evolve_schema(uri, dt, data)
    return _redo_on_conflict(uri, lambda: _merge_once(uri, data, keys, compare, delete_missing))


def _merge_once(uri: str, data: pa.Table, keys: Sequence[str], compare: Sequence[str], delete_missing: bool) -> int:
    dt = open_table(uri)
    # keys are never null here: rows without a key were quarantined before the merge
    predicate = " and ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    merger = (
        dt.merge(data, predicate=predicate, source_alias="s", target_alias="t", merge_schema=True)
        .when_matched_update_all(predicate=_changed(compare))
        .when_not_matched_insert_all()
    )
    if delete_missing:
        merger = merger.when_not_matched_by_source_delete()
    metrics = merger.execute()
    return sum(
        int(metrics.get(k, 0))
        for k in ("num_target_rows_inserted", "num_target_rows_updated", "num_target_rows_deleted")
    )


def _evolve_schema(uri: str, dt: DeltaTable, data: pa.Table | pa.RecordBatchReader) -> None:
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
