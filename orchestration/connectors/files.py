"""File drops (CSV, XLSX, JSON, JSON lines, Parquet) from a folder glob: each file is loaded once.

A file is identified by its path and checksum: an unchanged file is skipped, a re-delivered file with
new content replaces its earlier rows in bronze. Rows that cannot be read (ragged CSV lines, lines that
are not JSON) are returned as rejected with the file and line, never dropped.

Source keys: path (a local glob, `**` recursing, or an `s3://bucket/prefix/*.csv` glob), format,
encoding (utf-8-sig: a BOM is accepted), delimiter (","), header (true), sheet (XLSX: default the
first), records_path (JSON: dotted path to the array). A file that cannot be parsed at all is
recorded in quarantine with its reason (the agency's drop folder is never modified).
"""

from __future__ import annotations

import csv
import datetime as dt
import fnmatch
import glob
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from orchestration.config import Source
from orchestration.connectors import Landing, Rejected, text_table


def _s3(uri: str):
    """An S3 filesystem for uri: credentials from the AWS_* environment, AWS_ENDPOINT_URL for S3-compatibles."""
    import os

    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        return fs.S3FileSystem(endpoint_override=host or scheme, scheme=scheme if host else "https")
    return fs.S3FileSystem()


def read_bytes(path: str) -> bytes:
    """The whole content of a local file or an s3:// object."""
    if path.startswith("s3://"):
        with _s3(path).open_input_stream(path.removeprefix("s3://")) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def checksum(path: str) -> str:
    """sha256 of a file's content (its identity together with its path)."""
    return hashlib.sha256(read_bytes(path)).hexdigest()


def glob_files(pattern: str) -> list[str]:
    """Files matching a glob, sorted: a local pattern (`**` recurses) or an `s3://bucket/prefix/*.csv` one."""
    if not pattern.startswith("s3://"):
        return sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    from pyarrow import fs

    bare = pattern.removeprefix("s3://")
    # list from the deepest folder without a wildcard, then match the full key against the pattern
    wild = min((bare.find(c) for c in "*?[" if c in bare), default=len(bare))
    base = bare[:wild].rsplit("/", 1)[0]
    infos = _s3(pattern).get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
    parts = bare.split("/")
    return sorted("s3://" + i.path for i in infos if i.type == fs.FileType.File and _match(parts, i.path.split("/")))


def _match(parts: list[str], segments: list[str]) -> bool:
    """A key's segments against a glob's, as a local glob matches: `*` stays within a folder, `**` spans any."""
    if not parts:
        return not segments
    if parts[0] == "**":
        return any(_match(parts[1:], segments[i:]) for i in range(len(segments) + 1))
    return bool(segments) and fnmatch.fnmatchcase(segments[0], parts[0]) and _match(parts[1:], segments[1:])


def list_files(source: Source) -> list[str]:
    """The files the source's `path` glob matches now."""
    return glob_files(source.local_path())


def read_files(source: Source, loaded: set[tuple[str, str]] | None = None) -> Iterator[Landing]:
    """One Landing per new or changed file matched by the source's glob.

    A file that cannot be parsed at all (wrong encoding, not JSON, not a workbook) yields a Landing
    with no rows and one rejected record naming the file and the reason, so it is recorded in
    quarantine once and not retried until its content changes.
    """
    loaded = loaded or set()
    for path in list_files(source):
        data = read_bytes(path)
        digest = hashlib.sha256(data).hexdigest()
        if (path, digest) in loaded:
            continue
        yield parse_file(source, path, data, digest)


def parse_file(source: Source, path: str, data: bytes, digest: str) -> Landing:
    """One file's content as a Landing (rows and rejects); an unreadable file is one rejected record."""
    try:
        rows, rejected = _parse(source, path, data)
    except Exception as exc:  # noqa: BLE001 - any parser's error means the same: record the file, go on
        reason = f"file could not be parsed as {source.get('format')}: {type(exc).__name__}: {exc}"
        return Landing(rows=pa.table({}), rejected=[Rejected(path, reason[:1000], path)], file=path, checksum=digest)
    return Landing(rows=rows, rejected=rejected, file=path, checksum=digest)


def _parse(source: Source, path: str, data: bytes) -> tuple[pa.Table, list[Rejected]]:
    fmt = source.get("format")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)), []
    if fmt == "csv":
        return _csv(source, path, data)
    if fmt == "xlsx":
        return _xlsx(source, data)
    text = data.decode(source.get("encoding", "utf-8-sig"), errors="strict")
    if fmt == "jsonl":
        return jsonl_records(text, path)
    body = json.loads(text)
    for part in (source.get("records_path") or "").split(".") if source.get("records_path") else []:
        body = body.get(part, None) if isinstance(body, dict) else None
    if not isinstance(body, list):
        raise ValueError(f"{source.where}: {path} holds no JSON array of records; set records_path")
    good = [r for r in body if isinstance(r, dict)]
    bad = [
        Rejected(json.dumps(r), "not a JSON object", f"{path} item {i}")
        for i, r in enumerate(body)
        if not isinstance(r, dict)
    ]
    return text_table(good), bad


def jsonl_records(text: str, path: str) -> tuple[pa.Table, list[Rejected]]:
    """JSON lines as an all-text table; a line that is not a JSON object is rejected with its line number."""
    records, rejected = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            rejected.append(Rejected(line, f"not valid JSON: {exc.msg} at column {exc.colno}", f"{path}:{n}"))
            continue
        if isinstance(obj, dict):
            records.append(obj)
        else:
            rejected.append(Rejected(line, "a JSON line must be an object", f"{path}:{n}"))
    return text_table(records), rejected


def _csv(source: Source, path: str, data: bytes) -> tuple[pa.Table, list[Rejected]]:
    delimiter = source.get("delimiter", ",")
    text = data.decode(source.get("encoding", "utf-8-sig"), errors="strict")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    if not rows:
        return pa.table({}), []
    if source.get("header", True):
        header, body, first = rows[0], rows[1:], 2
    else:
        header, body, first = [f"column{i + 1}" for i in range(len(rows[0]))], rows, 1
    good: list[list[str]] = []
    rejected: list[Rejected] = []
    for n, row in enumerate(body, start=first):
        if len(row) == len(header):
            good.append(row)
        elif any(cell.strip() for cell in row):
            buf = io.StringIO()
            csv.writer(buf, delimiter=delimiter).writerow(row)
            rejected.append(
                Rejected(buf.getvalue().strip(), f"expected {len(header)} fields, got {len(row)}", f"{path}:{n}")
            )
    columns = {h: pa.array([r[i] if r[i] != "" else None for r in good], pa.string()) for i, h in enumerate(header)}
    return pa.table(columns), rejected


def _xlsx(source: Source, data: bytes) -> tuple[pa.Table, list[Rejected]]:
    from openpyxl import load_workbook

    wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        ws = wb[source.get("sheet")] if source.get("sheet") else wb.worksheets[0]
        rows = list(ws.iter_rows(values_only=True))
    finally:
        wb.close()
    if not rows:
        return pa.table({}), []
    header = [str(h) for h in rows[0]]

    def cell(v: object) -> object:
        # Excel has no date type: a midnight datetime is a date cell
        if isinstance(v, dt.datetime) and v.time() == dt.time(0):
            return v.date()
        return v

    records = [dict(zip(header, map(cell, r), strict=False)) for r in rows[1:] if any(v is not None for v in r)]
    return text_table(records), []


def file_stamps(pattern: str) -> dict[str, str]:
    """Files matching a glob now -> "size:mtime" (cheap change detection for sensors; no content read)."""
    if pattern.startswith("s3://"):
        from pyarrow import fs

        infos = _s3(pattern).get_file_info([p.removeprefix("s3://") for p in glob_files(pattern)])
        return {"s3://" + i.path: f"{i.size}:{i.mtime_ns}" for i in infos if i.type == fs.FileType.File}
    stamps = {}
    for p in glob_files(pattern):
        try:
            st = Path(p).stat()
        except FileNotFoundError:
            continue
        stamps[p] = f"{st.st_size}:{st.st_mtime_ns}"
    return stamps
