"""Every value citylake wrote, searched for given strings: the rows of each Parquet file (every Delta
version still on disk, not only the current one), of each DuckDB and SQLite table (SQLite blobs
decompressed when zlib-compressed, as Dagster stores its snapshots), and the raw bytes of every file
(Delta logs, dbt artefacts, run logs, the binary files themselves). Used to prove that a secret or a
planted personal value is nowhere.

Matching is case-insensitive and by whole words at the value's ends ("Ann" is not found in "Annual").
Thousands of values are searched in one pass: each text is cut into alphanumeric tokens, a value is a
candidate only when its longest token is among them, and a candidate is confirmed by substring search
(regular expressions with thousands of alternatives are far too slow on tens of megabytes).
"""

from __future__ import annotations

import re
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SQLITE_MAGIC = b"SQLite format 3\x00"
_TOKEN = re.compile(r"[a-z0-9]+")


def files_under(*roots: Path) -> list[Path]:
    return sorted(p for root in roots if root.exists() for p in root.rglob("*") if p.is_file())


def _duckdb_tables(path: Path) -> Iterator[tuple[str, pa.Table]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = con.sql(
            "select table_schema, table_name from information_schema.tables where table_type = 'BASE TABLE'"
        ).fetchall()
        for schema, name in names:
            yield f"{schema}.{name}", con.sql(f'select * from "{schema}"."{name}"').to_arrow_table()
    finally:
        con.close()


def _sqlite_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = zlib.decompress(value)
        except zlib.error:
            pass
        return value.decode("utf-8", "replace")
    return str(value)


def _sqlite_tables(path: Path) -> Iterator[tuple[str, pa.Table]]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
        for name in names:
            cur = con.execute(f'select * from "{name}"')
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
            texts = {c: pa.array([_sqlite_text(r[i]) for r in rows], pa.string()) for i, c in enumerate(cols)}
            yield name, pa.table(texts)
    finally:
        con.close()


def tables_in(path: Path) -> Iterator[tuple[str, pa.Table]]:
    """The tables a file holds (none for a plain file)."""
    if path.suffix == ".parquet":
        yield "", pq.read_table(path)
    elif path.suffix == ".duckdb":
        yield from _duckdb_tables(path)
    else:
        with open(path, "rb") as f:
            if f.read(16) == SQLITE_MAGIC:
                yield from _sqlite_tables(path)


def _as_text(column: pa.ChunkedArray) -> list[str] | None:
    """A column's values as text, or None when its type cannot hold text (numbers, dates, booleans)."""
    t = column.type
    if pa.types.is_dictionary(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        column = pc.cast(column, pa.string())
    elif pa.types.is_nested(t):
        return [str(v) for v in column.to_pylist() if v is not None]
    elif not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return None
    return [v for v in column.to_pylist() if v is not None]


def documents(roots: list[Path]) -> Iterator[tuple[str, str]]:
    """(where, text) for every file's raw bytes and every text column of every table under `roots`."""
    for path in files_under(*roots):
        # latin-1 maps every byte to one character: binary files are searched as they are
        yield f"{path} [bytes]", path.read_bytes().decode("latin-1")
        for table_name, table in tables_in(path):
            for name in table.column_names:
                values = _as_text(table.column(name))
                if values:
                    yield f"{path} [{table_name}.{name}]", "\n".join(values)


class Needles:
    """Values to look for, indexed by their longest token."""

    def __init__(self, values: list[str]) -> None:
        self.by_anchor: dict[str, list[tuple[str, str]]] = {}
        for value in {v.strip() for v in values if v and v.strip()}:
            tokens = _TOKEN.findall(value.lower())
            assert tokens, f"cannot search for {value!r}: it has no letter or digit"
            anchor = max(tokens, key=len)
            self.by_anchor.setdefault(anchor, []).append((value, value.lower()))

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_anchor.values())

    def find(self, text: str) -> str | None:
        """The first value occurring in `text` as whole words, else None."""
        low = text.lower()
        for anchor in self.by_anchor.keys() & set(_TOKEN.findall(low)):
            for value, needle in self.by_anchor[anchor]:
                start = low.find(needle)
                while start >= 0:
                    end = start + len(needle)
                    before = low[start - 1] if start else " "
                    after = low[end] if end < len(low) else " "
                    # whole words at the value's ends, when those ends are letters or digits
                    glued = (needle[0].isalnum() and before.isalnum()) or (needle[-1].isalnum() and after.isalnum())
                    if not glued:
                        return value
                    start = low.find(needle, start + 1)
        return None


def search(roots: list[Path], values: list[str]) -> list[str]:
    """Where any of `values` occurs under `roots`: 'file [table.column or bytes]: value' (one per place)."""
    needles = Needles(values)
    return [f"{where}: {found!r}" for where, text in documents(roots) if (found := needles.find(text))]
