"""File drops (CSV, XLSX, JSON, JSON lines, Parquet) from a folder glob: each file is loaded once.

A file is identified by its path and checksum: an unchanged file is skipped, a re-delivered file with
new content replaces its earlier rows in bronze. Rows that cannot be read (ragged CSV lines, lines that
are not JSON) are returned as rejected with the file and line, never dropped.

Source keys: path (a glob), format, encoding (utf-8-sig: a BOM is accepted), delimiter (","),
header (true), sheet (XLSX: default the first), records_path (JSON: dotted path to the array).
"""

from __future__ import annotations

import csv
import datetime as dt
import glob
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from orchestration.config import Source
from orchestration.connectors import Landing, Rejected, text_table


def checksum(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_files(source: Source) -> list[str]:
    pattern = source.local_path()
    return sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())


def read_files(source: Source, loaded: set[tuple[str, str]] | None = None) -> Iterator[Landing]:
    """One Landing per new or changed file matched by the source's glob."""
    loaded = loaded or set()
    for path in list_files(source):
        digest = checksum(path)
        if (path, digest) in loaded:
            continue
        rows, rejected = _parse(source, path)
        yield Landing(rows=rows, rejected=rejected, file=path, checksum=digest)


def _parse(source: Source, path: str) -> tuple[pa.Table, list[Rejected]]:
    fmt = source.get("format")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path), []
    if fmt == "csv":
        return _csv(source, path)
    if fmt == "xlsx":
        return _xlsx(source, path)
    text = Path(path).read_text(encoding=source.get("encoding", "utf-8-sig"), errors="strict")
    if fmt == "jsonl":
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


def _csv(source: Source, path: str) -> tuple[pa.Table, list[Rejected]]:
    delimiter = source.get("delimiter", ",")
    with open(path, encoding=source.get("encoding", "utf-8-sig"), newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        rows = list(reader)
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


def _xlsx(source: Source, path: str) -> tuple[pa.Table, list[Rejected]]:
    from openpyxl import load_workbook

    wb = load_workbook(path, read_only=True, data_only=True)
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
