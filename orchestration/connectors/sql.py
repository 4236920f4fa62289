"""SQL sources (sqlite, postgres, mysql) through their DB-API drivers, streamed in batches.

Incremental by `cursor:` (a column): rows with cursor >= the last stored value are read again and
upserted, so rows that share the boundary value are never skipped and never duplicated.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from orchestration.config import Source
from orchestration.connectors import Landing

BATCH_ROWS = 50_000


def connect(source: Source):
    """A DB-API connection for the source (drivers imported only when that kind is used)."""
    if source.kind == "sqlite":
        import sqlite3

        path = source.local_path()
        # read-only: citylake never writes to an agency's database
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    if source.kind == "postgres":
        import psycopg

        return psycopg.connect(source.secret("dsn"))
    if source.kind == "mysql":
        from urllib.parse import unquote, urlparse

        import pymysql

        u = urlparse(source.secret("dsn"))
        return pymysql.connect(
            host=u.hostname or "127.0.0.1",
            port=u.port or 3306,
            user=unquote(u.username or ""),
            password=unquote(u.password or ""),
            database=u.path.lstrip("/") or None,
        )
    raise ValueError(f"{source.where}: not a SQL source")


def _quote(name: str, kind: str) -> str:
    q = "`" if kind == "mysql" else '"'
    return ".".join(q + part.replace(q, q + q) + q for part in name.split("."))


def source_query(source: Source, cursor: Any | None) -> tuple[str, tuple]:
    """The statement that reads the source past the cursor, with its parameters."""
    base = source.get("query") or f"select * from {_quote(source.get('table'), source.kind)}"
    col = source.get("cursor")
    if not col:
        return base, ()
    marker = "?" if source.kind == "sqlite" else "%s"
    qcol = _quote(col, source.kind)
    where = "" if cursor is None else f" where {qcol} >= {marker}"
    return f"select * from ({base}) as src{where} order by {qcol}", (() if cursor is None else (cursor,))


def read_sql(source: Source, cursor: Any | None) -> Iterator[Landing]:
    sql, params = source_query(source, cursor)
    conn = connect(source)
    try:
        cur = conn.cursor()
        cur.execute(sql, params)
        names = [d[0] for d in cur.description]
        while True:
            rows = cur.fetchmany(BATCH_ROWS)
            if not rows:
                break
            yield Landing(rows=pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}))
    finally:
        conn.close()
