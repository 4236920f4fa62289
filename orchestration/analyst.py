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

An EXPLAIN [ANALYZE] is checked as the statement it explains. A query is bounded too: at most `limit`
rows are fetched (streamed in chunks, so the limit bounds memory), it is interrupted after `timeout`
seconds, and DuckDB may use at most `memory_limit` (no spilling to disk). Table output shows control
characters escaped (a value cannot fake rows or send terminal escapes); CSV output prefixes text that a
spreadsheet would run as a formula with ' unless asked for raw values.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

#: rows printed when --limit is not given (0: all)
DEFAULT_LIMIT = 10_000
#: seconds a query may run when --timeout is not given (0: no limit)
DEFAULT_TIMEOUT = 60.0
#: memory DuckDB may use for one query when --memory-limit is not given
DEFAULT_MEMORY_LIMIT = "2GB"
#: rows fetched from DuckDB at a time
_CHUNK = 2048
_MEMORY = re.compile(r"(?i)\d+(\.\d+)?\s*(b|bytes|kb|mb|gb|tb|kib|mib|gib|tib)")
#: EXPLAIN [ANALYZE] [(options)] before the explained statement, with any comments between
_GAP = r"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*"
_EXPLAIN = re.compile(rf"(?is){_GAP}explain\b{_GAP}(?:analy[sz]e\b{_GAP})?(?:\((?:[^()']|'[^']*')*\){_GAP})?")
#: characters a table cell shows escaped: C0/C1 controls (newline, tab, ESC...), zero-width and bidi marks
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: how a spreadsheet formula starts (and tab / CR, which some spreadsheets skip before one)
_FORMULA = ("=", "+", "-", "@", "\t", "\r")

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
    if kind == "EXPLAIN":
        _check_explained(con, statements[0].query)
    elif kind not in _ALLOWED:
        what = _WHAT.get(kind, kind.replace("_", " ").lower())
        raise QueryError(
            f"refused: {kind.replace('_', ' ')} statements ({what}) are not allowed; citylake sql is read-only "
            "and runs queries only (select / with / from / describe / show / summarize / pivot / explain)"
        )


def _check_explained(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """EXPLAIN [ANALYZE] runs (ANALYZE) or plans its statement: that statement must be allowed on its own."""
    head = _EXPLAIN.match(sql)
    inner = sql[head.end() :] if head else ""
    try:
        check_read_only(con, inner)
    except QueryError as exc:
        why = str(exc).removeprefix("refused: ")
        raise QueryError(f"refused: EXPLAIN runs or plans its statement, which is refused: {why}") from None


def _timed_out(timeout: float) -> QueryError:
    return QueryError(
        f"stopped: the query ran longer than the {timeout:g} s time limit and was interrupted; narrow it, "
        "or give more time with --timeout SECONDS (--timeout 0: no time limit)"
    )


class _Deadline:
    """Interrupts the connection's query after `seconds` (0: never), from a timer thread."""

    def __init__(self, con: duckdb.DuckDBPyConnection, seconds: float) -> None:
        self.con, self.fired, self._done, self._lock = con, False, False, threading.Lock()
        self._timer = threading.Timer(seconds, self._fire) if seconds else None
        if self._timer:
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if not self._done:
                self.fired = True
                self.con.interrupt()

    def stop(self) -> None:
        with self._lock:
            self._done = True
        if self._timer:
            self._timer.cancel()


@dataclass
class Printed:
    """What `execute` wrote: how many rows, and whether the row limit cut some off."""

    rows: int
    cut: bool


def execute(
    catalog: Path,
    sql: str,
    write: Callable[[str], object],
    fmt: str = "table",
    limit: int | None = DEFAULT_LIMIT,
    timeout: float = DEFAULT_TIMEOUT,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    safe_csv: bool = True,
) -> Printed:
    """Run one read-only query against the catalog and write it, chunk by chunk, as a table, CSV or JSON.

    At most `limit` rows are fetched (None or 0: all), in chunks, so the limit bounds memory; CSV and
    JSON are written as they arrive. The query is interrupted after `timeout` seconds (0: never) and
    DuckDB may use at most `memory_limit` (nothing spills to disk).
    """
    if not catalog.exists():
        raise QueryError(f"{catalog} does not exist yet: run `citylake run` (or `make demo`) to publish it")
    if not _MEMORY.fullmatch(memory_limit.strip()):
        raise QueryError(f"--memory-limit {memory_limit!r}: give a size such as 500MB, 2GB or 1.5GiB")
    con = duckdb.connect(
        str(catalog),
        read_only=True,
        config={
            "enable_external_access": False,
            "memory_limit": memory_limit.strip(),
            "temp_directory": "",  # a query that outgrows memory_limit fails instead of filling the disk
            "lock_configuration": True,
        },
    )
    deadline = _Deadline(con, timeout)
    try:
        check_read_only(con, sql)
        cur = con.execute(sql)
        if cur.description is None:
            return Printed(0, False)
        out = _Writer(fmt, [d[0] for d in cur.description], write, safe_csv)
        cap = limit or None
        while True:
            want = _CHUNK if cap is None else min(_CHUNK, cap - out.count + 1)
            rows = cur.fetchmany(want)
            if not rows:
                break
            if cap is not None and out.count + len(rows) > cap:
                out.add(rows[: cap - out.count])
                out.end()
                return Printed(out.count, True)
            out.add(rows)
        out.end()
        return Printed(out.count, False)
    except duckdb.InterruptException:
        if deadline.fired:
            raise _timed_out(timeout) from None
        raise QueryError("the query was interrupted") from None
    except duckdb.OutOfMemoryException as exc:
        raise QueryError(
            f"stopped: the query needs more memory than the {memory_limit} limit ({str(exc).splitlines()[0]}); "
            "narrow it (filter, aggregate, fewer columns), or give more with --memory-limit, e.g. --memory-limit 8GB"
        ) from None
    except duckdb.PermissionException as exc:
        raise QueryError(
            f"refused: {exc}\ncitylake sql reads only the catalog's tables, never files; "
            "to query files use DuckDB itself"
        ) from None
    except duckdb.Error as exc:
        if deadline.fired:
            raise _timed_out(timeout) from None
        raise QueryError(f"{exc}\nTables in the catalog: {', '.join(tables(con))}") from None
    finally:
        deadline.stop()
        con.close()


def run_query(
    catalog: Path,
    sql: str,
    fmt: str = "table",
    limit: int | None = DEFAULT_LIMIT,
    timeout: float = DEFAULT_TIMEOUT,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    safe_csv: bool = True,
) -> str:
    """`execute`, with the output returned as one string."""
    parts: list[str] = []
    execute(catalog, sql, parts.append, fmt, limit, timeout, memory_limit, safe_csv)
    return "".join(parts)


class _Writer:
    """Rows rendered as they arrive: CSV and JSON written at once, the aligned table at the end (it needs
    every row's width)."""

    def __init__(self, fmt: str, cols: list[str], write: Callable[[str], object], safe_csv: bool) -> None:
        self.fmt, self.cols, self.write, self.safe_csv = fmt, cols, write, safe_csv
        self.count = 0
        self.cells: list[list[str]] = []
        if fmt == "csv":
            self._csv([cols])

    def _csv(self, rows: list) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerows([[_spreadsheet_safe(v) for v in r] for r in rows] if self.safe_csv else rows)
        self.write(buf.getvalue())

    def add(self, rows: list[tuple]) -> None:
        if self.fmt == "csv":
            self._csv(rows)
        elif self.fmt == "json":
            for r in rows:
                item = json.dumps([dict(zip(self.cols, r, strict=True))], default=str, indent=1)[2:-2]
                self.write(("[\n" if self.count == 0 else ",\n") + item)
                self.count += 1
            return
        else:
            self.cells += [[_cell(v) for v in r] for r in rows]
        self.count += len(rows)

    def end(self) -> None:
        if self.fmt == "json":
            self.write("[]\n" if self.count == 0 else "\n]\n")
        elif self.fmt == "table":
            self.write(_table([_printable(c) for c in self.cols], self.cells))


def render(cols: list[str], rows: list[tuple], fmt: str, safe_csv: bool = True) -> str:
    """Rows as an aligned text table (with a row count), CSV with a header, or a JSON array of objects."""
    parts: list[str] = []
    out = _Writer(fmt, cols, parts.append, safe_csv)
    out.add(rows)
    out.end()
    return "".join(parts)


def _table(cols: list[str], cells: list[list[str]]) -> str:
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    out.append(f"({len(cells)} row{'s' if len(cells) != 1 else ''})")
    return "\n".join(out) + "\n"


def _cell(v: object) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    return _printable(str(v))


def _printable(text: str) -> str:
    """`text` with control characters (newlines, tabs, terminal escapes, bidi overrides) shown escaped, so a
    value can neither fake table rows nor drive the terminal."""
    return _CONTROL.sub(_escaped, text)


def _escaped(m: re.Match) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def _spreadsheet_safe(v: object) -> object:
    """A text value a spreadsheet would run as a formula, prefixed with ' so it opens as text."""
    return "'" + v if isinstance(v, str) and v.startswith(_FORMULA) else v
