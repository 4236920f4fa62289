"""Delta tables in the lake: where they live and the few write patterns citylake uses.

Every write is idempotent: it overwrites exactly what it owns (a predicate), upserts by key (merge),
or replaces the whole table. delta-rs commits are atomic, so a crash leaves the last committed version.
A merge or predicate overwrite that loses the commit race to another writer of the same table (Delta's
optimistic concurrency: "a concurrent transaction added new data") is redone against the new version,
a few times with backoff; both writers' rows land.

On object storage (`lake.root: s3://bucket/prefix`) a commit is a conditional put of the next log entry
(see `storage_options`): of two writers racing for one version exactly one creates it, the other sees the
conflict and commits on top, so no commit is lost without any lock table. Errors reaching the store say
which table and what to check (`LakeError`), never a credential.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from orchestration.config import CityConfig

#: delta-rs's object-store option that makes a commit a conditional put (If-None-Match: the commit file is
#: created only if no other writer created that version first): safe with several writers and no lock table
CONDITIONAL_PUT = "aws_conditional_put"


def storage_options(uri: str) -> dict[str, str] | None:
    """delta-rs options for an s3:// uri (None for a local path): commits by conditional put.

    Credentials, region and endpoint are not in here: delta-rs reads them from the environment itself
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL, ...), so no
    secret is ever held in these options or written where they go (the generated dbt sources). A commit is a
    put of the next `_delta_log/<version>.json` that only succeeds when no other writer created that version
    (`aws_conditional_put: etag`, If-None-Match; AWS_CONDITIONAL_PUT in the environment chooses another mode
    delta-rs knows). Never "unsafe rename": with two writers, it silently loses commits.
    """
    if not uri.startswith("s3://"):
        return None
    if os.environ.get("AWS_S3_ALLOW_UNSAFE_RENAME", "").strip().lower() in ("1", "true", "yes"):
        raise UnsafeStorageError(
            "AWS_S3_ALLOW_UNSAFE_RENAME is set in the environment: with it, two writers of one Delta table lose "
            "commits. citylake commits by conditional put instead (AWS_CONDITIONAL_PUT, default etag); unset "
            "AWS_S3_ALLOW_UNSAFE_RENAME"
        )
    opts = {CONDITIONAL_PUT: os.environ.get("AWS_CONDITIONAL_PUT", "").strip() or "etag"}
    if os.environ.get("AWS_ENDPOINT_URL", "").lower().startswith("http://"):
        opts["AWS_ALLOW_HTTP"] = "true"  # an S3-compatible server without TLS (a local one)
    return opts


class LakeError(RuntimeError):
    """The lake on object storage cannot be reached or read (the message says why, never a secret)."""


class UnsafeStorageError(LakeError):
    """The environment asks delta-rs for a commit mode that loses writes."""


#: environment variables whose values are secrets: never in a message (delta-rs does not print them, but a
#: server's or a proxy's error text is not ours to trust)
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: a delta-rs error from the object store (a read fails as OSError, a data file's PUT as a DeltaError)
_STORE_ERROR = re.compile(r"S3 error|Error performing|object store", re.IGNORECASE)


def _reason(exc: BaseException) -> str:
    """The gist of a delta-rs object-store error: its first line, the server's error code and the innermost
    cause (delta-rs chains them with arrows over several lines, and may quote the server's XML)."""
    lines = [_ANSI.sub("", line).replace("\u21b3", "").strip() for line in str(exc).splitlines()]
    lines = [line.removeprefix("Kernel error -> ") for line in lines if line and not line.startswith("<")]
    code = re.search(r"<Code>([^<]+)</Code>", str(exc))
    parts = [lines[0] if lines else type(exc).__name__]
    if len(lines) > 1:
        parts.append(lines[-1])
    if code:
        parts.append(code.group(1))
    from orchestration.connectors import redact_values

    return redact_values(": ".join(dict.fromkeys(parts)), [os.environ.get(name, "") for name in SECRET_ENV])


@contextmanager
def remote_errors(uri: str, doing: str, key: str = "lake.root in city.yaml") -> Iterator[None]:
    """Errors of the object store (refused credentials, missing bucket, unreachable endpoint) as a LakeError
    naming the object, the city.yaml key (or option) that put it there and the environment the store is
    reached with, not delta-rs's multi-line chain."""
    try:
        yield
    except (OSError, DeltaError) as exc:
        # a commit race and an absent table are not the store's errors: they go up as they are
        if "://" not in uri or isinstance(exc, CommitFailedError | TableNotFoundError):
            raise
        if isinstance(exc, DeltaError) and not _STORE_ERROR.search(str(exc)):
            raise
        raise LakeError(
            f"cannot {doing} {uri} ({key}): {_reason(exc)}. Object storage is reached with credentials and "
            "endpoint from the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN), "
            "AWS_REGION and, for an S3-compatible server, AWS_ENDPOINT_URL"
        ) from None


def bronze_uri(cfg: CityConfig, agency: str, source: str) -> str:
    return cfg.lake_path("bronze", agency, source)


def quarantine_uri(cfg: CityConfig, agency: str, source: str) -> str:
    return cfg.lake_path("quarantine", agency, source)


def mart_uri(cfg: CityConfig, mart: str) -> str:
    return cfg.lake_path("marts", mart)


def open_table(uri: str) -> DeltaTable | None:
    """The Delta table at uri, or None when nothing was committed there yet."""
    try:
        with remote_errors(uri, "read the Delta table at"):
            return DeltaTable(uri, storage_options=storage_options(uri))
    except TableNotFoundError:
        return None


def append(uri: str, data: pa.Table | pa.RecordBatchReader, **options) -> None:
    """Add `data` to the table at uri (creating it) in one commit; `options` go to write_deltalake."""
    with remote_errors(uri, "write to the Delta table at"):
        write_deltalake(uri, data, mode="append", storage_options=storage_options(uri), **options)


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


def files_with(table: DeltaTable, column: str, value: str) -> list[str]:
    """The current files of `table` that may hold rows whose text `column` equals `value`, by the Delta
    log's statistics (a file without them is kept; a truncated string bound is compared as a prefix)."""
    from urllib.parse import unquote

    actions = pa.table(table.get_add_actions(flatten=True))
    names = actions.schema.names
    lows = actions.column(f"min.{column}").to_pylist() if f"min.{column}" in names else [None] * len(actions)
    highs = actions.column(f"max.{column}").to_pylist() if f"max.{column}" in names else [None] * len(actions)
    kept = {
        unquote(str(path)).rsplit("/", 1)[-1]
        for path, lo, hi in zip(actions.column("path").to_pylist(), lows, highs, strict=True)
        if lo is None or hi is None or (str(lo) <= value and value[: len(str(hi))] <= str(hi))
    }
    return [f for f in table.file_uris() if unquote(f).rsplit("/", 1)[-1] in kept]


def parquet_select(con, table: DeltaTable, files: Sequence[str] | None = None) -> str:
    """SQL (a `select`) of a Delta table's rows as its current version holds them (or only those of `files`,
    some of its current files), read by DuckDB's Parquet reader on `con`: each column of the Delta schema
    cast to its type, null where the files lack it; no rows when there is no file. For a table on local
    disk (DuckDB cannot read s3:// without its httpfs extension, which cannot be installed offline)."""
    from orchestration.quality import quote

    files = table.file_uris() if files is None else files
    con.register("_citylake_delta_schema", pa.schema(table.schema().to_arrow()).empty_table())
    try:
        types = {r[0]: r[1] for r in con.execute("describe _citylake_delta_schema").fetchall()}
    finally:
        con.unregister("_citylake_delta_schema")
    if not files:
        return "select " + ", ".join(f"cast(null as {t}) as {quote(c)}" for c, t in types.items()) + " where false"
    scan = "read_parquet([" + ", ".join(_sql_literal(f) for f in files) + "], union_by_name = true)"
    present = {r[0] for r in con.execute(f"describe select * from {scan}").fetchall()}
    columns = ", ".join(f"cast({quote(c) if c in present else 'null'} as {t}) as {quote(c)}" for c, t in types.items())
    return f"select {columns} from {scan}"


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
            with remote_errors(uri, "write to the Delta table at"):
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


def overwrite_where(uri: str, data: pa.Table | pa.RecordBatchReader, column: str, values: Sequence[str]) -> None:
    """Replace the rows whose `column` is one of `values` with `data` (the units a load owns, e.g. files), in
    one commit; `data` may be a stream of batches (a big file), written without holding it in memory."""
    dt = open_table(uri)
    if dt is None:
        append(uri, data)
        return
    _evolve_schema(uri, dt, data)
    _redo_on_conflict(
        uri,
        lambda: write_deltalake(
            uri,
            data,
            mode="overwrite",
            predicate=f"{column} in ({', '.join(_sql_literal(v) for v in values)})",
            storage_options=storage_options(uri),
        ),
    )


def replace(uri: str, data: pa.Table) -> None:
    """Replace the whole table (a full snapshot load)."""
    with remote_errors(uri, "write to the Delta table at"):
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
        append(uri, data)
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
        append(uri, pa.Table.from_batches([], schema=pa.schema(new)).cast(pa.schema(new)), schema_mode="merge")
