"""Read-only queries over the analyst catalog (`citylake sql`).

Three layers keep `citylake sql` from changing or leaking anything, each enough on its own for the
common cases and together for the odd ones:

1. The statement is classified by DuckDB's own parser (not by keywords, so `where status = 'drop'`
   or a column called `update_count` still runs): only queries (SELECT, WITH, FROM-first, VALUES,
   DESCRIBE, SHOW, SUMMARIZE, PIVOT) and EXPLAIN run. INSERT / UPDATE / DELETE, DDL (CREATE, DROP,
   ALTER, COMMENT), ATTACH / DETACH, COPY, EXPORT / IMPORT, INSTALL / LOAD, SET / RESET / USE,
   PRAGMA, CALL, CHECKPOINT, VACUUM, transactions and prepared statements are refused with a message
   naming the statement.
2. The catalog is opened read-only, so a write that got past (1) fails in DuckDB.
3. External access is off and the configuration locked: table functions that read or write files
   (read_csv, read_parquet, read_text, glob, COPY ... TO) fail, and no statement can switch that
   back on. Reading files is deliberately refused too: citylake sql answers from the published
   catalog, the one thing every analyst shares; for ad-hoc files use DuckDB itself.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import duckdb

#: statement types a query may be (PIVOT parses as MULTI: it declares a temporary type, then selects)
_ALLOWED = {"SELECT", "EXPLAIN", "MULTI"}
#: what each refused statement type is, for the message
_WHAT = {
    "INSERT": "writes",
    "UPDATE": "writes",
    "DELETE": "writes",
    "MERGE_INTO": "writes",
    "CREATE": "DDL",
    "DROP": "DDL",
    "ALTER": "DDL",
    "CREATE_FUNC": "DDL",
    "ATTACH": "attaching databases",
    "DETACH": "attaching databases",
    "COPY": "COPY",
    "COPY_DATABASE": "COPY",
    "EXPORT": "exporting",
    "LOAD": "installing or loading extensions",
    "SET": "changing settings",
    "VARIABLE_SET": "changing settings",
    "PRAGMA": "PRAGMA",
    "UNKNOWN": "not a query",
}


class QueryError(RuntimeError):
    """The query was refused or failed: the message says why and lists the tables."""


def tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The catalog's tables, for error messages."""
    return [
        r[0]
        for r in con.execute(
            "select table_name from information_schema.tables where table_schema = 'main' order by 1"
        ).fetchall()
    ]


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one query, naming the statement that is not allowed."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"{exc}\nTables in the catalog: {', '.join(tables(con))}") from None
    if not statements:
        raise QueryError('no query given: citylake sql "select ..." or citylake sql -f query.sql')
    if len(statements) > 1:
        raise QueryError(f"give one query at a time ({len(statements)} statements were given, separated by ';')")
    try:
        kind = statements[0].type.name
    except ValueError:
        # a statement type the Python enum does not know (e.g. UPDATE EXTENSIONS): never a query
        kind = "UNKNOWN"
    if kind not in _ALLOWED:
        what = _WHAT.get(kind, kind.replace("_", " ").lower())
        raise QueryError(
            f"refused: {kind.replace('_', ' ')} statements ({what}) are not allowed; citylake sql is read-only "
            "and runs queries only (select / with / from / describe / show / summarize / pivot / explain)"
        )


def run_query(catalog: Path, sql: str, fmt: str = "table", limit: int | None = None) -> str:
    """Run one read-only query against the catalog and render it as a table, CSV or JSON."""
    if not catalog.exists():
        raise QueryError(f"{catalog} does not exist yet: run `citylake run` (or `make demo`) to publish it")
    con = duckdb.connect(
        str(catalog), read_only=True, config={"enable_external_access": False, "lock_configuration": True}
    )
    try:
        check_read_only(con, sql)
        rel = con.sql(sql)
        if rel is None:
            return ""
        if limit is not None:
            rel = rel.limit(limit)
        cols = rel.columns
        rows = rel.fetchall()
    except duckdb.PermissionException as exc:
        raise QueryError(
            f"refused: {exc}\ncitylake sql reads only the catalog's tables, never files; "
            "to query files use DuckDB itself"
        ) from None
    except duckdb.Error as exc:
        raise QueryError(f"{exc}\nTables in the catalog: {', '.join(tables(con))}") from None
    finally:
        con.close()
    return render(cols, rows, fmt)


def render(cols: list[str], rows: list[tuple], fmt: str) -> str:
    """Rows as an aligned text table (with a row count), CSV with a header, or a JSON array of objects."""
    if fmt == "json":
        return json.dumps([dict(zip(cols, r, strict=True)) for r in rows], default=str, indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
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
