"""Loading one source into its bronze Delta table, with its quarantine.

The rules, in one place:
- Every bronze row carries `_ingested_at` (UTC), `_batch` (the Dagster run id), `_source_file` and
  `_source_checksum` (files only).
- A row without a primary-key value, or repeating a key already seen in the same landing, goes to
  `<lake>/quarantine/<agency>/<source>` with its reason; so does a row a connector could not read.
  Quarantine rows are keyed by a hash of (record, reason): a rerun never duplicates them.
- Files: each file's rows replace that file's earlier rows (overwrite by `_source_file`); unchanged
  files are skipped. Sources with a `cursor:` are read from the last stored cursor and upserted by
  primary key. Sources without either are full snapshots and replace the table in one commit.
- The cursor is never stored apart from the data: it is the maximum cursor value in bronze itself,
  so it moves in the same atomic Delta commit as the rows (a crash cannot lose or repeat rows).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestration import lake
from orchestration.config import CityConfig, Source
from orchestration.connectors import Landing, Rejected, read_source

META_COLUMNS = ("_ingested_at", "_batch", "_source_file", "_source_checksum")


@dataclass
class IngestResult:
    """What one load did (shown as asset metadata)."""

    rows_read: int = 0
    rows_written: int = 0
    quarantined: int = 0
    files_loaded: list[str] = field(default_factory=list)
    cursor_before: Any = None
    columns_added: list[str] = field(default_factory=list)
    delta_version: int | None = None
    row_count: int = 0


def cursor_field(source: Source) -> str | None:
    cur = source.get("cursor")
    return cur.get("field") if isinstance(cur, dict) else cur


def _cursor_key(value: str) -> Any:
    """Order cursor values as instants when they parse as ISO timestamps (offsets differ across DST)."""
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    except ValueError:
        return str(value)


def stored_cursor(source: Source, bronze: pa.Table | None) -> Any:
    col = cursor_field(source)
    if not col or bronze is None or col not in bronze.column_names or bronze.num_rows == 0:
        return None
    values = bronze.column(col)
    if pa.types.is_string(values.type):
        present = [v for v in values.to_pylist() if v is not None]
        return max(present, key=_cursor_key) if present else None
    return pc.max(values).as_py()


def _key_text(row: dict, keys: tuple[str, ...]) -> str:
    return "|".join("" if row.get(k) is None else str(row.get(k)) for k in keys)


def split_keys(table: pa.Table, keys: tuple[str, ...], location: str) -> tuple[pa.Table, list[Rejected]]:
    """Drop rows with a missing key or a key repeated within the landing (first kept) into rejects."""
    missing_cols = [k for k in keys if k not in table.column_names]
    if missing_cols and table.num_rows:
        raise ValueError(
            f"primary key column(s) {', '.join(missing_cols)} not in the source; it has "
            f"{', '.join(table.column_names)}. Fix primary_key in city.yaml"
        )
    if table.num_rows == 0:
        return table, []
    rows = table.select(list(keys)).to_pylist()
    seen: set[str] = set()
    keep: list[bool] = []
    rejected: list[Rejected] = []
    full = None
    for i, row in enumerate(rows):
        null = [k for k in keys if row[k] is None or row[k] == ""]
        key = _key_text(row, keys)
        reason = None
        if null:
            reason = f"missing primary key {', '.join(null)}"
        elif key in seen:
            reason = f"duplicate primary key {key} in one load (first kept)"
        seen.add(key)
        keep.append(reason is None)
        if reason:
            full = full or table.to_pylist()
            rejected.append(
                Rejected(json.dumps(full[i], default=str, sort_keys=True), reason, location, record_key=key)
            )
    return table.filter(pa.array(keep)), rejected


def _with_meta(table: pa.Table, batch: str, now: dt.datetime, landing: Landing) -> pa.Table:
    n = table.num_rows
    for name, arr in (
        ("_ingested_at", pa.array([now] * n, pa.timestamp("us", tz="UTC"))),
        ("_batch", pa.array([batch] * n, pa.string())),
        ("_source_file", pa.array([landing.file] * n, pa.string())),
        ("_source_checksum", pa.array([landing.checksum] * n, pa.string())),
    ):
        table = table.append_column(name, arr)
    # Delta has no null type: an all-empty column lands as text
    return table.cast(
        pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema])
    )


def _quarantine_table(
    source: Source, rejected: list[Rejected], batch: str, now: dt.datetime, landing: Landing
) -> pa.Table:
    def qid(r: Rejected) -> str:
        return hashlib.sha256(f"{source.key}\0{r.record}\0{r.reason}".encode()).hexdigest()

    n = len(rejected)
    return pa.table(
        {
            "_quarantine_id": pa.array([qid(r) for r in rejected], pa.string()),
            "agency": pa.array([source.agency] * n, pa.string()),
            "source": pa.array([source.name] * n, pa.string()),
            "record_key": pa.array([r.record_key for r in rejected], pa.string()),
            "record": pa.array([r.record for r in rejected], pa.string()),
            "reason": pa.array([r.reason for r in rejected], pa.string()),
            "location": pa.array([r.location for r in rejected], pa.string()),
            "_source_file": pa.array([landing.file] * n, pa.string()),
            "_source_checksum": pa.array([landing.checksum] * n, pa.string()),
            "_batch": pa.array([batch] * n, pa.string()),
            "_ingested_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def _loaded_files(*tables: pa.Table | None) -> set[tuple[str, str]]:
    loaded: set[tuple[str, str]] = set()
    for t in tables:
        if t is not None and "_source_file" in t.column_names:
            pairs = t.select(["_source_file", "_source_checksum"]).group_by(["_source_file", "_source_checksum"])
            for row in pairs.aggregate([]).to_pylist():
                if row["_source_file"]:
                    loaded.add((row["_source_file"], row["_source_checksum"]))
    return loaded


def ingest(cfg: CityConfig, source: Source, batch: str, log: Callable[[str], None] = lambda _m: None) -> IngestResult:
    """Load what is new in `source` into bronze; return what was done."""
    uri = lake.bronze_uri(cfg, source.agency, source.name)
    quri = lake.quarantine_uri(cfg, source.agency, source.name)
    bronze = lake.read_table(uri)
    quarantine = lake.read_table(quri, columns=["_source_file", "_source_checksum"])
    before = set(bronze.column_names) if bronze is not None else set()
    result = IngestResult(cursor_before=stored_cursor(source, bronze))
    loaded = _loaded_files(bronze, quarantine) if source.kind == "files" else set()
    del bronze  # only its cursor and file list were needed
    now = dt.datetime.now(dt.UTC)
    snapshot: list[pa.Table] = []
    for landing in read_source(source, result.cursor_before, loaded):
        result.rows_read += landing.rows.num_rows + len(landing.rejected)
        good, dupes = split_keys(landing.rows, source.primary_key, landing.file or source.where)
        rejected = landing.rejected + dupes
        table = _with_meta(good, batch, now, landing)
        if landing.file:
            lake.overwrite_where(uri, table, "_source_file", landing.file)
            result.files_loaded.append(landing.file)
        elif cursor_field(source):
            lake.upsert(uri, table, source.primary_key)
        else:
            snapshot.append(table)
        if rejected:
            _write_quarantine(quri, _quarantine_table(source, rejected, batch, now, landing))
        result.rows_written += table.num_rows
        result.quarantined += len(rejected)
        log(
            f"{source.key}: {table.num_rows} rows landed, {len(rejected)} quarantined"
            + (f" from {landing.file}" if landing.file else "")
        )
    if snapshot:
        lake.replace(uri, pa.concat_tables(snapshot, promote_options="permissive"))
    dt_ = lake.open_table(uri)
    if dt_ is None:
        # an empty source still gets its (empty) table, so dbt and analysts can read it
        lake.replace(
            uri,
            _with_meta(
                pa.table({k: pa.array([], pa.string()) for k in source.primary_key}),
                batch,
                now,
                Landing(rows=pa.table({})),
            ),
        )
        dt_ = lake.open_table(uri)
    if lake.open_table(quri) is None:
        _write_quarantine(quri, _quarantine_table(source, [], batch, now, Landing(rows=pa.table({}))))
    result.delta_version = dt_.version()
    names = dt_.schema().to_arrow().names
    result.columns_added = [c for c in names if before and c not in before]
    result.row_count = dt_.to_pyarrow_dataset().count_rows()
    return result


def _write_quarantine(uri: str, table: pa.Table) -> None:
    dt_ = lake.open_table(uri)
    if dt_ is None:
        from deltalake import write_deltalake

        write_deltalake(uri, table, mode="append", storage_options=lake.storage_options(uri))
        return
    (
        dt_.merge(
            table,
            predicate="t._quarantine_id = s._quarantine_id",
            source_alias="s",
            target_alias="t",
            merge_schema=True,
        )
        .when_not_matched_insert_all()
        .execute()
    )
