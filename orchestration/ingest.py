"""Loading one source into its bronze Delta table, with its quarantine.

The rules, in one place:
- Rows failing a row-level expectation of the source's bronze suite (expectations/bronze.<agency>.
  <source>.json, plus not-null primary-key columns) go to quarantine, the reason naming the
  expectation; the bronze asset check then judges the load against the expectations' `mostly`.
- Every bronze row carries `_ingested_at` (UTC), `_batch` (the Dagster run id), `_source_file` and
  `_source_checksum` (files only).
- A row without a primary-key value, or repeating a key already seen in the same landing, goes to
  `<lake>/quarantine/<agency>/<source>` with its reason; so does a row a connector could not read.
  Quarantine rows are keyed by a hash of (file, record, reason): a rerun never duplicates them.
- Files: each file's rows replace that file's earlier rows (overwrite by `_source_file`); unchanged
  files are skipped. The files of one load are committed together, one Delta commit per
  BRONZE_COMMIT_BYTES of rows (a file read in pieces streams in a commit of its own).
- Sources with a `cursor:` are read from the last stored cursor and upserted by primary key: SQL
  sources one commit per batch (read in cursor order), APIs one commit per load (an API's page order
  is its own). Sources without either are full snapshots and replace the table in one commit.
- MQTT batches (delivered at least once) are upserted by primary key; an identical redelivery is
  dropped silently; a batch file is moved to `ingested/` only after its rows are committed.
- Schema drift: incoming columns are cast to bronze's types. A new column is added to bronze (and
  listed in `columns_added`); a column the source no longer sends is null; a value that cannot be
  cast to its bronze type sends its row to quarantine with the column, value and type.
- Quarantine is written before bronze, and bronze last: a crash in between leaves the rows unloaded
  and a rerun reads them again (quarantine ids dedup the rejects). Rows unchanged from what bronze
  holds are not rewritten, so a rerun with nothing new commits no Delta version.
- Personal data (`personal_data:` in city.yaml, orchestration/privacy.py) is dropped or hashed as each
  landing is read, before the gate, so neither bronze nor quarantine ever holds the raw values.
- The cursor is never stored apart from the data: it is the maximum cursor value in bronze itself,
  so it moves in the same atomic Delta commit as the rows (a crash cannot lose or repeat rows).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from orchestration import lake
from orchestration.config import CityConfig, Source
from orchestration.connectors import LOCATION, Landing, Rejected, read_ahead, read_source, scrubbed, secret_values
from orchestration.keys import integer_text_problem, key_text
from orchestration.privacy import PersonalData
from orchestration.quality import bronze_suite, split_rows

#: a file's rejects are written to quarantine in batches of this many (bounded memory for a bad file)
QUARANTINE_FLUSH = 50_000
#: new and changed files of a load are committed to bronze together, one Delta commit each time this much
#: Arrow data is waiting (a first load of a year of daily files: a few commits, not one per file)
BRONZE_COMMIT_BYTES = 64 * 2**20
#: a long load says how far it got (rows read, rows/s) this often, in seconds
PROGRESS_EVERY_S = 5.0
META_COLUMNS = ("_ingested_at", "_batch", "_source_file", "_source_checksum")
#: columns that say how a row arrived, not what it says: a row differing only here is unchanged
UNCOMPARED = (*META_COLUMNS, "_received_at")


class SourceError(RuntimeError):
    """A source failed to load; the message names the source and never holds a secret."""


@dataclass
class IngestResult:
    """What one load did (shown as asset metadata)."""

    rows_read: int = 0
    rows_written: int = 0
    quarantined: int = 0
    files_loaded: list[str] = field(default_factory=list)
    cursor_before: Any = None
    columns_added: list[str] = field(default_factory=list)
    columns_missing: list[str] = field(default_factory=list)
    delta_version: int | None = None
    versions_committed: int = 0
    row_count: int = 0
    #: rows put through the bronze suite's row-level expectations, and how many each rejected
    rows_gated: int = 0
    gate_failures: dict[str, int] = field(default_factory=dict)


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


def _content(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in UNCOMPARED}


def stored_cursor(source: Source, bronze: pa.Table | None) -> Any:
    """The largest cursor value in bronze (ISO timestamps compared as instants); None when empty."""
    col = cursor_field(source)
    if not col or bronze is None or col not in bronze.column_names or bronze.num_rows == 0:
        return None
    values = bronze.column(col)
    if pa.types.is_string(values.type):
        present = [v for v in values.to_pylist() if v is not None]
        return max(present, key=_cursor_key) if present else None
    return pc.max(values).as_py()


def _rejected(row: dict, reason: str, location: str, record_key: str | None = None) -> Rejected:
    """A row that cannot go to bronze: its record as JSON, and its place (a file row's own: path:N)."""
    where = row.pop(LOCATION, None) or location
    return Rejected(json.dumps(row, default=str, sort_keys=True), reason, where, record_key=record_key)


def _key_text(row: dict, keys: tuple[str, ...]) -> str:
    return key_text([row.get(k) for k in keys])


class KeySet:
    """The primary keys one load has seen, as two 64-bit keyed hashes per key (16 bytes a key whatever
    the key's size), kept in sorted runs: a file of any size is checked for repeated keys in bounded
    memory. Two different keys are taken for one with a probability of about n^2 / 2^129."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []
        salt = secrets.token_hex(16)
        self.salts = (salt[:16], salt[16:])

    def hashes(self, table: pa.Table, keys: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Each row's key (its columns' texts, each prefixed by its length, so no two keys run together)."""
        parts: list[pa.Array] = []
        for k in keys:
            col = table.column(k).combine_chunks()
            try:
                text = col if pa.types.is_string(col.type) else pc.cast(col, pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                text = pa.array([None if v is None else repr(v) for v in col.to_pylist()], pa.string())
            text = pc.fill_null(text, "")
            parts += [pc.cast(pc.binary_length(text), pa.string()), text]
        joined = pc.binary_join_element_wise(*parts, ":").to_numpy(zero_copy_only=False)
        a, b = (pd.util.hash_array(joined, hash_key=s, categorize=False) for s in self.salts)
        return a, b

    def _known(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        found = np.zeros(len(a), bool)
        for ra, rb in self.runs:
            lo = np.searchsorted(ra, a, "left")
            hi = np.searchsorted(ra, a, "right")
            one = (hi - lo) == 1
            found[one] |= rb[lo[one]] == b[one]
            for i in np.flatnonzero(hi - lo > 1):  # the first hashes collide: compare the second ones
                found[i] |= bool((rb[lo[i] : hi[i]] == b[i]).any())
        return found

    def add(self, table: pa.Table, keys: tuple[str, ...], valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Record the valid rows' keys; returns (repeat: a key seen before, first: the row of this table
        that first had it, -1 when that was an earlier table)."""
        n = table.num_rows
        repeat, first = np.zeros(n, bool), np.full(n, -1)
        rows = np.flatnonzero(valid)
        if not len(rows):
            return repeat, first
        keyed = table.select(list(keys))
        a, b = self.hashes(keyed if len(rows) == table.num_rows else keyed.take(rows), keys)
        order = np.lexsort((rows, b, a))
        sa, sb, srow = a[order], b[order], rows[order]
        new = np.ones(len(order), bool)
        new[1:] = (sa[1:] != sa[:-1]) | (sb[1:] != sb[:-1])
        leader = np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))
        repeat[srow[~new]] = True
        first[srow[~new]] = srow[leader[~new]]
        known = self._known(sa[new], sb[new])
        repeat[srow[new][known]] = True
        fresh = ~known
        self._insert(sa[new][fresh], sb[new][fresh])
        return repeat, first

    def _insert(self, a: np.ndarray, b: np.ndarray) -> None:
        if not len(a):
            return
        order = np.argsort(a, kind="stable")
        self.runs.append((a[order], b[order]))
        # merge runs of similar size: O(log n) runs to search, each key moved O(log n) times
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            (a1, b1), (a2, b2) = self.runs.pop(), self.runs.pop()
            ma, mb = np.concatenate([a2, a1]), np.concatenate([b2, b1])
            order = np.argsort(ma, kind="stable")
            self.runs.append((ma[order], mb[order]))


def _missing_key(table: pa.Table, keys: tuple[str, ...]) -> np.ndarray:
    """Rows whose key has a null (or, in a text column, empty) part."""
    missing = np.zeros(table.num_rows, bool)
    for k in keys:
        col = table.column(k)
        empty = pc.is_null(col)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            empty = pc.or_(empty, pc.fill_null(pc.equal(col, ""), False))
        missing |= empty.to_numpy(zero_copy_only=False)
    return missing


def split_keys(
    table: pa.Table,
    keys: tuple[str, ...],
    location: str,
    drop_identical: bool = False,
    seen: KeySet | None = None,
) -> tuple[pa.Table, list[Rejected]]:
    """Drop rows with a missing key or a key repeated within the load (first kept) into rejects.

    `seen` carries the keys of earlier pieces of the same load (a big file comes in pieces). With
    `drop_identical` (MQTT, delivered at least once), a repeat whose values equal the kept row's is a
    redelivery, not a bad record: it is dropped without a quarantine entry.
    """
    missing_cols = [k for k in keys if k not in table.column_names]
    if missing_cols and table.num_rows:
        raise ValueError(
            f"primary key column(s) {', '.join(missing_cols)} not in the source; it has "
            f"{', '.join(table.column_names)}. Fix primary_key in city.yaml"
        )
    if table.num_rows == 0:
        return table, []
    missing = _missing_key(table, keys)
    repeat, first = (seen or KeySet()).add(table, keys, ~missing)
    bad = np.flatnonzero(missing | repeat)
    if not len(bad):
        return table, []
    keep = np.ones(table.num_rows, bool)
    rows = table.take(bad).to_pylist()
    firsts = table.take(first[bad][first[bad] >= 0]).to_pylist() if drop_identical else []
    earlier = iter(firsts)
    rejected: list[Rejected] = []
    for i, row in zip(bad, rows, strict=True):
        keep[i] = False
        key = _key_text(row, keys)
        if missing[i]:
            null = [k for k in keys if row[k] is None or row[k] == ""]
            reason = f"missing primary key {', '.join(null)}"
        else:
            if drop_identical and first[i] >= 0 and _content(row) == _content(next(earlier)):
                continue
            reason = f"duplicate primary key {key} in one load (first kept)"
        rejected.append(_rejected(row, reason, location, key))
    return table.filter(pa.array(keep)), rejected


def _last_per_key(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Each key's last row (a record updated while an API was paged through shows on two pages)."""
    if table.num_rows == 0 or any(k not in table.column_names for k in keys):
        return table
    rows = table.select(list(keys)).to_pylist()
    last = {tuple(r[k] for k in keys): i for i, r in enumerate(rows)}
    return table.take(sorted(last.values()))


def conform(
    table: pa.Table, schema: pa.Schema | None, keys: tuple[str, ...], location: str
) -> tuple[pa.Table, list[Rejected], list[str]]:
    """Cast `table` to bronze's schema: (typed rows, rows whose values cannot be cast, missing columns).

    Bronze columns the table lacks are added as nulls; columns bronze lacks are kept (drift, added
    on write); an all-null column takes bronze's type (or text when bronze has none).
    """
    n = table.num_rows
    known = {f.name: f.type for f in schema} if schema is not None else {}
    failed: dict[int, list[str]] = {}
    columns: dict[str, pa.Array] = {}
    for name in table.column_names:
        arr = table.column(name)
        target = known.get(name) or (pa.string() if pa.types.is_null(arr.type) else arr.type)
        if arr.type != target:
            # only a column that needs a cast is copied (a big file's piece is not held twice)
            if name in keys:
                _check_key_cast(arr, target, name, failed)
            arr = _cast(arr.combine_chunks(), target, name, failed)
        columns[name] = arr
    missing = [f.name for f in schema if f.name not in columns and f.name not in META_COLUMNS] if schema else []
    for name in missing:
        columns[name] = pa.nulls(n, known[name])
    order = [f.name for f in schema if f.name in columns] if schema is not None else []
    order += [c for c in columns if c not in order]
    typed = pa.table({c: columns[c] for c in order})
    if not failed:
        return typed, [], missing
    bad = sorted(failed)
    rejected = [
        _rejected(row, "; ".join(failed[i]), location, _key_text(row, keys))
        for i, row in zip(bad, table.take(bad).to_pylist(), strict=True)
    ]
    keep = pa.array([i not in failed for i in range(n)])
    return typed.filter(keep), rejected, missing


def _check_key_cast(arr: pa.ChunkedArray, target: pa.DataType, name: str, failed: dict[int, list[str]]) -> None:
    """A key text that casts to an integer but is not written as one ('01', '-0') would become another
    record's key: its row is noted in `failed` (orchestration/keys.py: a key's identity is its typed value)."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) or not pa.types.is_integer(target):
        return
    odd = pc.fill_null(pc.match_substring_regex(arr, r"^-?0[0-9]+$|^-0$"), False)
    for i in np.flatnonzero(odd.to_numpy(zero_copy_only=False)):
        problem = integer_text_problem(arr[int(i)].as_py())
        if problem:
            failed.setdefault(int(i), []).append(f"column {name}: {problem}")


def _cast(arr: pa.Array, target: pa.DataType, name: str, failed: dict[int, list[str]]) -> pa.Array:
    """arr cast to target; values that cannot be cast become null and their rows are noted in `failed`."""
    try:
        return pc.cast(arr, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    bad = []
    for i in range(len(arr)):
        if not arr[i].is_valid:
            continue
        try:
            pc.cast(arr.slice(i, 1), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            bad.append(i)
            failed.setdefault(i, []).append(
                f"column {name}: value {arr[i].as_py()!r} ({arr.type}) cannot be cast to bronze type {target}"
            )
    mask = pa.array([i in set(bad) for i in range(len(arr))])
    return pc.cast(pc.if_else(mask, pa.scalar(None, arr.type), arr), target)


def _with_meta(table: pa.Table, batch: str, now: dt.datetime, landing: Landing) -> pa.Table:
    n = table.num_rows
    for name, value in (
        ("_ingested_at", pa.scalar(now, pa.timestamp("us", tz="UTC"))),
        ("_batch", pa.scalar(batch, pa.string())),
        ("_source_file", pa.scalar(landing.file, pa.string())),
        ("_source_checksum", pa.scalar(landing.checksum, pa.string())),
    ):
        table = table.append_column(name, pa.repeat(value, n))
    return table


def _quarantine_table(
    source: Source, rejected: list[Rejected], batch: str, now: dt.datetime, landing: Landing, file_done: bool = False
) -> pa.Table:
    # a record and its reason, per delivered file of a `files` source: a rerun (or an API page or MQTT message
    # delivered again, whatever its batch) never duplicates a quarantine row, and the same bad line in two
    # files is two rows (an export's trailer line in every daily file), not one. The file as the city names
    # it (relative to city.yaml's folder), so that a city moved to another folder keeps its ids.
    delivery = ""
    if source.kind == "files" and landing.file:
        delivery = landing.file if "://" in landing.file else os.path.relpath(landing.file, source.base_dir)

    def qid(r: Rejected) -> str:
        return hashlib.sha256(f"{source.key}\0{delivery}\0{r.record}\0{r.reason}".encode()).hexdigest()

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
            # a file with no good rows is finished once its rejects are here (nothing goes to bronze)
            "_file_done": pa.array([file_done] * n, pa.bool_()),
            # how the file was read: a file refused whole is read again once the source reads files differently
            "_read_options": pa.array([landing.options] * n, pa.string()),
            "_batch": pa.array([batch] * n, pa.string()),
            "_ingested_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def _file_pairs(uri: str, options: str | None = None) -> set[tuple[str, str]]:
    """(file, checksum) pairs a table holds, read a batch at a time (bronze may hold billions of rows).

    In quarantine only files finished there count (`_file_done`: no row of them reached bronze), and of
    those only the ones read with the source's current reading `options` (or before options were kept).
    """
    dt_ = lake.open_table(uri)
    if dt_ is None:
        return set()
    dataset = dt_.to_pyarrow_dataset()
    wanted = ["_source_file", "_source_checksum", "_file_done", "_read_options"]
    columns = [c for c in wanted if c in dataset.schema.names]
    if "_source_file" not in columns or "_source_checksum" not in columns:
        return set()
    if "://" not in uri:  # on local disk: one DISTINCT by DuckDB's Parquet reader (0.18 s -> 0.06 s for 4M air rows)
        import duckdb

        where, params = ["_source_file <> ''"], []
        if "_file_done" in columns:
            where.append("coalesce(_file_done, false)")
            if "_read_options" in columns and options is not None:
                where.append("coalesce(_read_options = ?, true)")
                params.append(options)
        with duckdb.connect() as con:
            rows = con.execute(
                f"select distinct _source_file, _source_checksum from ({lake.parquet_select(con, dt_)}) "
                f"where {' and '.join(where)}",
                params,
            ).fetchall()
        return set(rows)
    pairs: set[tuple[str, str]] = set()
    for batch in dataset.to_batches(columns=columns, batch_size=1_000_000):
        table = pa.Table.from_batches([batch])
        if "_file_done" in columns:
            table = table.filter(pc.fill_null(table.column("_file_done"), False))
            if "_read_options" in columns and options is not None:
                same = pc.fill_null(pc.equal(table.column("_read_options"), options), True)
                table = table.filter(same)
        groups = table.select(["_source_file", "_source_checksum"]).group_by(["_source_file", "_source_checksum"])
        pairs.update((r["_source_file"], r["_source_checksum"]) for r in groups.aggregate([]).to_pylist())
    return {p for p in pairs if p[0]}


class _Spill:
    """The prepared pieces of one file: the first in memory, more on local disk (Arrow IPC, lz4), read
    back as one stream with one schema (pieces of JSON lines may differ in columns)."""

    def __init__(self, root: Path) -> None:
        self.root, self.folder = root, None
        self.first: pa.Table | None = None
        self.files: list[str] = []
        self.schemas: list[pa.Schema] = []

    def add(self, table: pa.Table) -> None:
        if self.first is None and not self.files:
            self.first = table
            return
        if self.folder is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self.folder = tempfile.mkdtemp(prefix="ingest-", dir=self.root)
        for t in (self.first, table):
            if t is None:
                continue
            path = os.path.join(self.folder, f"{len(self.files):06d}.arrow")
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, t.schema, options=options) as writer:
                writer.write_table(t, max_chunksize=65_536)
            self.files.append(path)
            self.schemas.append(t.schema)
        self.first = None

    def data(self) -> pa.Table | pa.RecordBatchReader:
        if self.first is not None:
            return self.first
        schema = pa.unify_schemas(self.schemas, promote_options="permissive")

        def batches() -> Iterator[pa.RecordBatch]:
            for path in self.files:
                with pa.memory_map(path) as source:
                    reader = pa.ipc.open_file(source)
                    for i in range(reader.num_record_batches):
                        yield _aligned(reader.get_batch(i), schema)

        return pa.RecordBatchReader.from_batches(schema, batches())

    def close(self) -> None:
        self.first = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def _with_keys(rows: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """JSON records without a key column at all: each is a record missing its key (a null column)."""
    for k in keys:
        if rows.num_rows and k not in rows.column_names:
            rows = rows.append_column(k, pa.nulls(rows.num_rows, pa.string()))
    return rows


def _aligned(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` with exactly `schema`'s columns and types (a column it lacks is null): a batch handed to
    the Delta writer must match its stream's schema exactly."""
    columns = []
    for f in schema:
        i = batch.schema.get_field_index(f.name)
        col = batch.column(i) if i >= 0 else pa.nulls(batch.num_rows, f.type)
        columns.append(col if col.type == f.type else col.cast(f.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class _Loader:
    """One ingest run's state: bronze's current schema and what has been written so far."""

    def __init__(self, cfg: CityConfig, source: Source, batch: str, log: Callable[[str], None]) -> None:
        self.source, self.batch, self.log = source, batch, log
        self.uri = lake.bronze_uri(cfg, source.agency, source.name)
        self.quri = lake.quarantine_uri(cfg, source.agency, source.name)
        self.schema = lake.schema(self.uri)
        self.now = dt.datetime.now(dt.UTC)
        self.result = IngestResult()
        self.started = self.last_tick = time.perf_counter()
        self.missing: set[str] = set()
        self.bronze_files: set[str] = set()
        #: files read and checked whose rows wait for the next bronze commit (`flush`)
        self.pending: list[tuple[str, pa.Table]] = []
        self.pending_bytes = 0
        #: the columns the pending files bring, typed as the first of them has it (as the commit will add them)
        self.pending_fields: dict[str, pa.Field] = {}
        self.suite = bronze_suite(source)
        self.spill_root = cfg.state_dir / "spill"
        # resolved first: a missing key fails the load before anything is written
        self.personal = PersonalData(source)
        stale = self.personal.stored_columns(self.schema.names if self.schema is not None else [])
        if stale:
            raise ValueError(
                f"{source.where}.personal_data.drop: bronze ({self.uri}) still holds {', '.join(stale)}, loaded "
                f"before the rule; delete it and {self.quri} so that the source reloads without them, then run again"
            )

    def prepare(
        self, landing: Landing, drop_identical: bool = False, seen: KeySet | None = None
    ) -> tuple[pa.Table, list[Rejected]]:
        """Personal data removed, keys checked, types conformed, metadata added: (rows for bronze, for quarantine)."""
        landing = self.personal.landing(landing)
        self.result.rows_read += landing.rows.num_rows + len(landing.rejected)
        self.tick()
        location = landing.file or self.source.where
        gated, failed = self.gate(landing.rows, location)
        good, dupes = split_keys(gated, self.source.primary_key, location, drop_identical, seen)
        typed, uncastable, missing = conform(good, self.target_schema(), self.source.primary_key, location)
        if LOCATION in typed.column_names:
            typed = typed.drop_columns([LOCATION])
        if landing.rows.num_rows:
            self.missing.update(missing)
        return _with_meta(typed, self.batch, self.now, landing), landing.rejected + failed + dupes + uncastable

    def target_schema(self) -> pa.Schema | None:
        """Bronze's schema with the columns that the files waiting in `pending` bring, typed as the first of
        them has it (as the commit will add it): a later file conforms to it as if they were committed."""
        fields = list(self.schema) if self.schema is not None else []
        names = {f.name for f in fields}
        fields += [f for name, f in self.pending_fields.items() if name not in names]
        return pa.schema(fields) if fields else None

    def tick(self) -> None:
        """Every PROGRESS_EVERY_S of a long load, a line with the rows read so far and the rate."""
        now = time.perf_counter()
        if now - self.last_tick >= PROGRESS_EVERY_S:
            self.last_tick = now
            rows = self.result.rows_read
            self.log(f"{self.source.key}: {rows:,} rows read so far ({rows / (now - self.started):,.0f} rows/s)")

    def gate(self, rows: pa.Table, location: str) -> tuple[pa.Table, list[Rejected]]:
        """The bronze suite's row-level expectations: rows that fail one go to quarantine, named after it."""
        good, failed = split_rows(self.suite, rows)
        self.result.rows_gated += rows.num_rows
        for _, reason in failed:
            self.result.gate_failures[reason] = self.result.gate_failures.get(reason, 0) + 1
        if not failed:
            return good, []
        records = rows.take([i for i, _ in failed]).to_pylist()
        keys = self.source.primary_key
        return good, [
            _rejected(r, reason, location, _key_text(r, keys) if all(k in r for k in keys) else None)
            for r, (_, reason) in zip(records, failed, strict=True)
        ]

    def quarantine(self, rejected: list[Rejected], landing: Landing, file_done: bool = False) -> None:
        if rejected:
            _write_quarantine(
                self.quri, _quarantine_table(self.source, rejected, self.batch, self.now, landing, file_done)
            )
            self.result.quarantined += len(rejected)

    def written(
        self, rows: int, landed: int, rejected: int, what: str = "", committed: bool = True, say: bool = True
    ) -> None:
        if committed:
            self.schema = lake.schema(self.uri)
        self.result.rows_written += rows
        if say:
            self.log(f"{self.source.key}: {landed} rows landed ({rows} new or changed), {rejected} quarantined{what}")

    def flush(self) -> None:
        """Commit the files waiting in `pending` to bronze in one Delta commit: each file's rows replace that
        file's earlier rows (a file now without good rows leaves none)."""
        if not self.pending:
            return
        files = [f for f, _ in self.pending]
        data = pa.concat_tables([t for _, t in self.pending], promote_options="permissive")
        lake.overwrite_where(self.uri, data, "_source_file", files)
        self.pending, self.pending_bytes, self.pending_fields = [], 0, {}
        self.schema = lake.schema(self.uri)
        self.log(f"{self.source.key}: {len(files)} file(s), {data.num_rows} rows committed to bronze")

    def compare(self, table: pa.Table) -> list[str]:
        return [c for c in table.column_names if c not in UNCOMPARED and c not in self.source.primary_key]

    def load_file(self, landing: Landing) -> None:
        """A file's rows replace that file's earlier rows, in one Delta commit whatever the file's size.

        The file comes in pieces, each checked like any landing (keys repeated across pieces too). Its
        rejects reach quarantine before its rows reach bronze (flushed every QUARANTINE_FLUSH). A file of
        one piece waits in `pending` and is committed with the files after it (`flush`); a file of more
        than one piece is spilled to <state_dir>/spill and written from there in a commit of its own. A
        file found unreadable part way is recorded whole in quarantine and none of its rows are written;
        one that changed while it was read is left for the next run.
        """
        from orchestration.connectors.files import FileChanged, UnreadableFile

        pieces = landing.pieces() if landing.pieces else iter([(landing.rows, landing.rejected)])
        keys = self.source.primary_key
        seen, spill = KeySet(), _Spill(self.spill_root)
        held: list[Rejected] = []
        good = rejected = 0
        try:
            for rows, bad in pieces:
                piece = Landing(rows=_with_keys(rows, keys), rejected=bad, file=landing.file, checksum=landing.checksum)
                table, rej = self.prepare(piece, seen=seen)
                held += rej
                rejected += len(rej)
                if len(held) > QUARANTINE_FLUSH:
                    # keep one back: the last flush says whether the file is done in quarantine
                    self.quarantine(held[:-1], landing)
                    held = held[-1:]
                if table.num_rows:
                    good += table.num_rows
                    spill.add(table)
            self.quarantine(held, landing, file_done=good == 0)
            if good or landing.file in self.bronze_files:
                data = spill.data() if good else self.no_rows(landing)
                if isinstance(data, pa.Table):
                    # a file read in one piece waits for the load's next commit (with the files after it)
                    self.pending.append((landing.file, data))
                    self.pending_bytes += data.nbytes
                    for f in data.schema:
                        self.pending_fields.setdefault(f.name, f)
                    if self.pending_bytes >= BRONZE_COMMIT_BYTES:
                        self.flush()
                else:
                    # a file spilled in pieces is streamed to bronze in a commit of its own
                    lake.overwrite_where(self.uri, data, "_source_file", [landing.file])
                    self.schema = lake.schema(self.uri)
        except UnreadableFile as exc:
            self.refuse(landing, str(exc))
            return
        except FileChanged as exc:
            self.log(f"{self.source.key}: {exc}")
            return
        finally:
            spill.close()
        self.result.files_loaded.append(landing.file)
        # a line per file that had rejects or replaced earlier rows (each line is a Dagster event: a year of
        # clean daily files says itself in the commits' lines)
        say = bool(rejected) or landing.file in self.bronze_files
        self.written(good, good, rejected, f" from {landing.file}", committed=False, say=say)

    def no_rows(self, landing: Landing) -> pa.Table:
        """No rows, with bronze's columns: what replaces the rows of a file that now has none for bronze (a
        predicate overwrite takes data of the table's schema)."""
        if self.schema is None:
            return _with_meta(pa.table({}), self.batch, self.now, landing)
        return self.schema.empty_table()

    def refuse(self, landing: Landing, reason: str) -> None:
        """A file that cannot be read at all: one quarantine record with the reason, and its earlier rows go."""
        self.result.rows_read += 1
        self.quarantine([Rejected(landing.file, reason[:1000], landing.file)], landing, file_done=True)
        if landing.file in self.bronze_files:
            empty = self.no_rows(landing)
            lake.overwrite_where(self.uri, empty, "_source_file", [landing.file])
        self.result.files_loaded.append(landing.file)
        self.written(0, 0, 1, f" from {landing.file} (refused: {reason[:200]})")

    def load_upsert(self, landings: list[Landing], drop_identical: bool = False, keep_last: bool = False) -> None:
        """Rows upserted by key (cursor sources, MQTT batches); unchanged rows are not rewritten.

        `keep_last` (an API's pages): a key repeated in a later landing replaces the earlier row, as
        one upsert per page would have done.
        """
        tables, rejected = [], []
        for landing in landings:
            table, rej = self.prepare(landing, drop_identical)
            self.quarantine(rej, landing)
            tables.append(table)
            rejected += rej
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        if keep_last:
            table = _last_per_key(table, self.source.primary_key)
        elif len(landings) > 1:
            # at-least-once delivery: the same message may come in two batches
            table, dupes = split_keys(table, self.source.primary_key, self.source.where, drop_identical)
            self.quarantine(dupes, Landing(rows=pa.table({})))
            rejected += dupes
        n = lake.upsert(self.uri, table, self.source.primary_key, self.compare(table)) if table.num_rows else 0
        for landing in landings:
            if landing.after_commit:
                landing.after_commit()
        self.written(n, table.num_rows, len(rejected))

    def load_snapshot(self, landings: list[Landing]) -> None:
        """The whole source replaces bronze in one commit, touching only rows that differ."""
        rows = pa.concat_tables([x.rows for x in landings], promote_options="permissive")
        landing = Landing(rows=rows, rejected=[r for x in landings for r in x.rejected])
        table, rejected = self.prepare(landing)
        self.quarantine(rejected, landing)
        n = lake.sync(self.uri, table, self.source.primary_key, self.compare(table))
        self.written(n, table.num_rows, len(rejected))


def loaded_files(cfg: CityConfig, source: Source) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """A files source's (file, checksum) pairs in bronze, and those plus the files finished in quarantine
    (read with the source's current options): what a load skips as already done."""
    from orchestration.connectors.files import read_options

    in_bronze = _file_pairs(lake.bronze_uri(cfg, source.agency, source.name))
    return in_bronze, in_bronze | _file_pairs(
        lake.quarantine_uri(cfg, source.agency, source.name), read_options(source)
    )


def checksum_memo_path(cfg: CityConfig, source: Source) -> Path:
    """Where a files source's checksums are remembered (see connectors.files.ChecksumMemo)."""
    return cfg.state_dir / "checksums" / f"{source.agency}.{source.name}.json"


def ingest(cfg: CityConfig, source: Source, batch: str, log: Callable[[str], None] = lambda _m: None) -> IngestResult:
    """Load what is new in `source` into bronze; return what was done.

    Errors name the source and never hold a secret (resolved `${VAR}` values are redacted).
    """
    try:
        return _ingest(cfg, source, batch, log)
    except Exception as exc:
        clean = scrubbed(exc, secret_values(source), source.where, SourceError)
        if clean is not None:
            raise clean from None
        if source.where not in str(exc):
            # a driver's or delta-rs's message does not say which source failed
            raise SourceError(f"{source.where}: {type(exc).__name__}: {exc}") from exc
        raise


def _ingest(cfg: CityConfig, source: Source, batch: str, log: Callable[[str], None]) -> IngestResult:
    loader = _Loader(cfg, source, batch, log)
    uri, result = loader.uri, loader.result
    before = set(loader.schema.names) if loader.schema is not None else set()
    version_before = lake.open_table(uri).version() if loader.schema is not None else -1
    col = cursor_field(source)
    if col and loader.schema is not None:
        # only the cursor column is read: the cursor is bronze's own maximum
        result.cursor_before = stored_cursor(source, lake.read_table(uri, columns=[col]))
    loaded: set[tuple[str, str]] = set()
    memo = None
    if source.kind == "files":
        from orchestration.connectors.files import ChecksumMemo

        in_bronze, loaded = loaded_files(cfg, source)
        loader.bronze_files = {f for f, _ in in_bronze}
        memo = ChecksumMemo(checksum_memo_path(cfg, source))
    pending: list[Landing] = []
    budget = source.get("batch_rows")  # mqtt: rows per commit (the model's default when unset)
    landings = read_source(source, result.cursor_before, loaded, memo)
    # a broker's batches are read as they are committed (each moved aside after its commit); every other
    # source is read on a second thread, ahead of the checks and commits here
    stream = landings if source.kind == "mqtt" else read_ahead(landings)
    try:
        for landing in stream:
            if source.kind == "files":
                loader.load_file(landing)
            elif source.kind == "mqtt":
                # many small batch files make one commit, up to batch_rows rows
                pending.append(landing)
                if sum(x.rows.num_rows for x in pending) >= budget:
                    loader.load_upsert(pending, drop_identical=True)
                    pending = []
            elif col and source.kind != "http_json":
                loader.load_upsert([landing])
            else:
                # an API pages in its own order (often newest first): its pages are committed together, so
                # a load that fails half way commits nothing and cannot move the cursor past unread records
                pending.append(landing)
    finally:
        stream.close()  # a load that fails stops its reader (and the source's files, connections) now
    loader.flush()
    if pending and source.kind == "mqtt":
        loader.load_upsert(pending, drop_identical=True)
    elif pending and col:
        loader.load_upsert(pending, keep_last=True)
    elif source.kind != "mqtt" and not col and source.kind != "files":
        if pending:
            loader.load_snapshot(pending)
        elif loader.schema is not None:
            # the source is empty now: so is its snapshot
            loader.load_snapshot([Landing(rows=pa.table({k: pa.array([], pa.string()) for k in source.primary_key}))])
    dt_ = lake.open_table(uri)
    if dt_ is None:
        # an empty source still gets its (empty) table, so dbt and analysts can read it
        empty = pa.table({k: pa.array([], pa.string()) for k in source.primary_key})
        lake.replace(uri, _with_meta(empty, batch, loader.now, Landing(rows=pa.table({}))))
        dt_ = lake.open_table(uri)
    if lake.open_table(loader.quri) is None:
        _write_quarantine(loader.quri, _quarantine_table(source, [], batch, loader.now, Landing(rows=pa.table({}))))
    result.delta_version = dt_.version()
    result.versions_committed = dt_.version() - version_before
    names = pa.schema(dt_.schema().to_arrow()).names
    result.columns_added = [c for c in names if before and c not in before]
    result.columns_missing = sorted(loader.missing)
    result.row_count = dt_.to_pyarrow_dataset().count_rows()
    return result


def _write_quarantine(uri: str, table: pa.Table) -> None:
    dt_ = lake.open_table(uri)
    if dt_ is None:
        lake.append(uri, table)
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
