"""SQL sources (sqlite, postgres, mysql) through their DB-API drivers, streamed in batches.

Incremental by `cursor:` (a column): rows with cursor >= the last stored value are read again and
upserted, so rows that share the boundary value are never skipped and never duplicated. Rows stream
from the server (a PostgreSQL named cursor, a MySQL unbuffered cursor) in batches of `batch_rows`
(50 000), so a table larger than memory loads in bounded memory.

Every read runs in a read-only transaction (`table:` and `query:` alike): a PostgreSQL session whose
transactions begin READ ONLY, a MySQL/MariaDB `START TRANSACTION READ ONLY` in a session whose
transactions are read-only, a SQLite file opened `mode=ro` with `PRAGMA query_only`. So a write the
`query:` check (orchestration/sql_rules.py) cannot see, such as a function that inserts, fails in the
database. The session also uses the string quoting the check parses with (PostgreSQL
standard_conforming_strings on; MySQL without ANSI_QUOTES / NO_BACKSLASH_ESCAPES), so a quote or
backslash cannot end a string for the server where the check saw it continue.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from orchestration.config import Source
from orchestration.connectors import Landing

#: MySQL modes that change how quotes and backslashes end a string (sqlglot parses without them)
_QUOTING_MODES = ("ANSI_QUOTES", "NO_BACKSLASH_ESCAPES", "ANSI")


def connect(source: Source):
    """A DB-API connection for the source (drivers imported only when that kind is used)."""
    if source.kind == "sqlite":
        import sqlite3

        path = source.local_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{source.where}.path: no SQLite database at {path}; fix the path in city.yaml")
        # read-only: citylake never writes to an agency's database
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("pragma query_only = on")
        return conn
    if source.kind == "postgres":
        import psycopg

        conn = psycopg.connect(source.secret("dsn"))
        conn.read_only = True  # every transaction psycopg begins is BEGIN READ ONLY
        conn.execute("set default_transaction_read_only = on")
        conn.execute("set standard_conforming_strings = on")
        return conn
    if source.kind == "mysql":
        from urllib.parse import unquote, urlparse

        import pymysql

        u = urlparse(source.secret("dsn"))
        conn = pymysql.connect(
            host=u.hostname or "127.0.0.1",
            port=u.port or 3306,
            user=unquote(u.username or ""),
            password=unquote(u.password or ""),
            database=u.path.lstrip("/") or None,
        )
        with conn.cursor() as cur:
            cur.execute("set session transaction read only")
            cur.execute("select @@session.sql_mode")
            modes = [m for m in (cur.fetchone()[0] or "").split(",") if m not in _QUOTING_MODES]
            cur.execute("set session sql_mode = %s", (",".join(modes),))
        return conn
    raise ValueError(f"{source.where}: not a SQL source")


def _quote(name: str, kind: str) -> str:
    q = "`" if kind == "mysql" else '"'
    return ".".join(q + part.replace(q, q + q) + q for part in name.split("."))


def source_query(source: Source, cursor: Any | None) -> tuple[str, tuple]:
    """The statement that reads the source past the cursor, with its parameters."""
    query = source.get("query")
    # a query is wrapped below (and by the probe): no trailing ';', and a newline so a last `--` comment
    # cannot swallow the closing parenthesis
    base = (
        query.rstrip().removesuffix(";") + "\n"
        if query
        else f"select * from {_quote(source.get('table'), source.kind)}"
    )
    col = source.get("cursor")
    if not col:
        return base, ()
    marker = "?" if source.kind == "sqlite" else "%s"
    qcol = _quote(col, source.kind)
    where = "" if cursor is None else f" where {qcol} >= {marker}"
    return f"select * from ({base}) as src{where} order by {qcol}", (() if cursor is None else (cursor,))


def _column(values: list[Any]) -> pa.Array:
    """One column of a batch; values a driver returns with mixed types (SQLite) land as text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def batch_table(names: list[str], rows: list[tuple]) -> pa.Table:
    """DB-API rows as an Arrow table; types are inferred per batch and cast to bronze's in ingest."""
    return pa.table({n: _column([r[i] for r in rows]) for i, n in enumerate(names)})


def _streaming_cursor(conn, source: Source):
    """A cursor that streams rows from the server instead of buffering the whole result client side."""
    if source.kind == "postgres":
        # a named cursor is a server-side portal: rows arrive itersize at a time
        cur = conn.cursor(name=f"citylake_{source.agency}_{source.name}")
        cur.itersize = batch_rows(source)
        return cur
    if source.kind == "mysql":
        import pymysql.cursors

        return conn.cursor(pymysql.cursors.SSCursor)
    return conn.cursor()


def batch_rows(source: Source) -> int:
    """Rows per batch (`batch_rows:`, default 50 000): bounds the memory a load needs."""
    return int(source.get("batch_rows"))


def read_sql(source: Source, cursor: Any | None) -> Iterator[Landing]:
    """The source's rows past `cursor`, one Landing per batch of `batch_rows`, in cursor order."""
    sql, params = source_query(source, cursor)
    size = batch_rows(source)
    conn = connect(source)
    try:
        if source.kind == "mysql":
            with conn.cursor() as begin:
                begin.execute("start transaction read only")
        cur = _streaming_cursor(conn, source)
        cur.execute(sql, params)
        names = [d[0] for d in cur.description]
        while True:
            rows = cur.fetchmany(size)
            if not rows:
                break
            yield Landing(rows=batch_table(names, rows))
        cur.close()
    finally:
        conn.close()
