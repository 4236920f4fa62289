"""Read-only queries over the analyst catalog (`citylake sql`).

The catalog is opened read-only, and statements that write, attach other databases, or write files
are refused before they run, so `citylake sql` can never change what analysts share.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import duckdb

# statements and table functions that write or reach outside the catalog
_REFUSED = re.compile(
    r"\b(insert|update|delete|merge|create|drop|alter|truncate|attach|detach|copy|export|import|install|load|"
    r"pragma|set|reset|checkpoint|vacuum|call)\b",
    re.IGNORECASE,
)
_STRINGS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.DOTALL)


class QueryError(RuntimeError):
    """The query was refused or failed: the message says why and lists the tables."""


def tables(catalog: Path) -> list[str]:
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        return [
            r[0]
            for r in con.execute(
                "select table_name from information_schema.tables where table_schema = 'main' order by 1"
            ).fetchall()
        ]
    finally:
        con.close()


def run_query(catalog: Path, sql: str, fmt: str = "table", limit: int | None = None) -> str:
    """Run one read-only query against the catalog and render the result."""
    if not catalog.exists():
        raise QueryError(f"{catalog} does not exist yet: run `citylake run` (or `make demo`) to publish it")
    words = _REFUSED.search(_STRINGS.sub(" ", sql))
    if words:
        raise QueryError(
            f"refused: `{words.group(1).upper()}` is not allowed; citylake sql is read-only "
            "(select / with / describe / show / summarize only)"
        )
    con = duckdb.connect(str(catalog), read_only=True, config={"enable_external_access": False})
    try:
        rel = con.sql(sql)
        if rel is None:
            return ""
        if limit is not None:
            rel = rel.limit(limit)
        cols = rel.columns
        rows = rel.fetchall()
    except duckdb.Error as exc:
        raise QueryError(f"{exc}\nTables in the catalog: {', '.join(tables(catalog))}") from None
    finally:
        con.close()
    return render(cols, rows, fmt)


def render(cols: list[str], rows: list[tuple], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([dict(zip(cols, r, strict=True)) for r in rows], default=str, indent=1) + "\n"
    if fmt == "csv":
        import csv

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows(rows)
        return buf.getvalue()
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def _cell(v: object) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
