"""The PostgreSQL sink: the analyst catalog's tables copied into one schema, swapped in atomically.

Everything is loaded into a staging schema first (tables, comments, grants to the read-only role);
then, in one short transaction, the live schema is renamed aside and the staging schema takes its
name. A BI query sees the old tables or the new ones, never a mix, and a failure before that
transaction leaves the live schema untouched. The old schema is dropped afterwards with a lock
timeout: a reader still inside a long transaction on it does not block publication (the drop is
retried at the next publication).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from orchestration.config import resolve_env

_BATCH = 10_000


@dataclass
class SinkResult:
    """What a publication to PostgreSQL did."""

    schema: str
    tables: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    reader_role: str | None = None
    stale_schemas_left: list[str] = field(default_factory=list)


def pg_type(duckdb_type: str) -> tuple[str, bool]:
    """The PostgreSQL type for a DuckDB column type, and whether DuckDB must cast the value to text first."""
    t = duckdb_type.upper()
    simple = {
        "VARCHAR": "text",
        "BIGINT": "bigint",
        "INTEGER": "integer",
        "SMALLINT": "smallint",
        "TINYINT": "smallint",
        "DOUBLE": "double precision",
        "FLOAT": "real",
        "BOOLEAN": "boolean",
        "DATE": "date",
        "TIMESTAMP": "timestamp",
        "TIMESTAMP WITH TIME ZONE": "timestamptz",
        "HUGEINT": "numeric",
        "UBIGINT": "numeric",
        "UINTEGER": "bigint",
    }
    if t in simple:
        return simple[t], False
    m = re.fullmatch(r"DECIMAL\((\d+),(\d+)\)", t.replace(" ", ""))
    if m:
        return f"numeric({m.group(1)},{m.group(2)})", False
    # lists, structs, intervals...: published as their text form rather than refused
    return "text", True


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SinkError(RuntimeError):
    """The sink failed; the message never holds a secret of its DSN."""


def publish_to_postgres(catalog: Path, sink: dict[str, Any]) -> SinkResult:
    """Copy the catalog's marts, districts and quarantine summary into `sink['schema']`, atomically.

    `sink` is city.yaml's `sinks.postgres` (dsn, schema, reader_role). The published catalog is the
    source, so PostgreSQL gets exactly the version analysts see in DuckDB. An error quoting the DSN's
    password (a driver misparsing it) is raised as SinkError with the secret redacted.
    """
    try:
        return _publish(catalog, sink)
    except Exception as exc:
        from orchestration.connectors import config_secrets, scrubbed

        clean = scrubbed(exc, config_secrets(sink), "sinks.postgres", SinkError)
        if clean is not None:
            raise clean from None
        raise


def _publish(catalog: Path, sink: dict[str, Any]) -> SinkResult:
    import psycopg

    schema = str(sink.get("schema", "citylake"))
    reader = sink.get("reader_role")
    dsn = resolve_env(str(sink["dsn"]), "sinks.postgres.dsn")
    result = SinkResult(schema=schema, reader_role=reader)
    staging = f"{schema}__staging"
    src = duckdb.connect(str(catalog), read_only=True)
    try:
        tables = [
            r[0]
            for r in src.execute(
                # every table but the raw quarantine (records as delivered, for data engineers, not BI)
                "select table_name from duckdb_tables() "
                "where schema_name = 'main' and table_name <> 'quarantine' order by 1"
            ).fetchall()
        ]
        comments = dict(src.execute("select table_name, comment from duckdb_tables()").fetchall())
        with psycopg.connect(dsn, autocommit=True) as pg:
            with pg.transaction():
                pg.execute(f"drop schema if exists {_ident(staging)} cascade")
                pg.execute(f"create schema {_ident(staging)}")
                if reader:
                    _ensure_role(pg, reader)
                for table in tables:
                    result.rows[table] = _copy_table(src, pg, staging, table, comments.get(table))
                    result.tables.append(table)
                if reader:
                    pg.execute(f"grant usage on schema {_ident(staging)} to {_ident(reader)}")
                    pg.execute(f"grant select on all tables in schema {_ident(staging)} to {_ident(reader)}")
            # the swap: renaming schemas takes no lock on their tables, so readers never make it wait
            old = f"{schema}__old_{time.time_ns()}"
            with pg.transaction():
                exists = pg.execute("select 1 from pg_namespace where nspname = %s", [schema]).fetchone()
                if exists:
                    pg.execute(f"alter schema {_ident(schema)} rename to {_ident(old)}")
                pg.execute(f"alter schema {_ident(staging)} rename to {_ident(schema)}")
            result.stale_schemas_left = _drop_old_schemas(pg, schema)
    finally:
        src.close()
    return result


def _ensure_role(pg, role: str) -> None:
    """Create the read-only role (no login: people log in as themselves and are granted it)."""
    if not pg.execute("select 1 from pg_roles where rolname = %s", [role]).fetchone():
        pg.execute(f"create role {_ident(role)} nologin")


def _copy_table(src: duckdb.DuckDBPyConnection, pg, schema: str, table: str, comment: str | None) -> int:
    cols = src.execute(
        "select column_name, data_type, comment from duckdb_columns() where table_name = ? order by column_index",
        [table],
    ).fetchall()
    types = [(name, *pg_type(dtype), text) for name, dtype, text in cols]
    target = f"{_ident(schema)}.{_ident(table)}"
    pg.execute(f"create table {target} ({', '.join(f'{_ident(n)} {t}' for n, t, _, _ in types)})")
    select = ", ".join(f'cast("{n}" as varchar)' if as_text else f'"{n}"' for n, _, as_text, _ in types)
    cur = src.execute(f'select {select} from "{table}"')
    rows = 0
    with pg.cursor().copy(f"copy {target} ({', '.join(_ident(n) for n, *_ in types)}) from stdin") as copy:
        while batch := cur.fetchmany(_BATCH):
            for row in batch:
                copy.write_row(row)
            rows += len(batch)
    if comment:
        pg.execute(f"comment on table {target} is {_literal(comment)}")
    for name, _, _, text in types:
        if text:
            pg.execute(f"comment on column {target}.{_ident(name)} is {_literal(text)}")
    return rows


def _literal(text: str) -> str:
    # COMMENT takes no bind parameters; a standard-conforming string literal is safe for any text
    return "'" + text.replace("'", "''") + "'"


def _drop_old_schemas(pg, schema: str) -> list[str]:
    """Drop the schemas earlier swaps set aside; one still in use by a reader is left for next time."""
    from psycopg.errors import LockNotAvailable

    left = []
    pattern = schema.replace("_", r"\_") + r"\_\_old\_%"
    olds = [r[0] for r in pg.execute("select nspname from pg_namespace where nspname like %s", [pattern]).fetchall()]
    for old in olds:
        try:
            with pg.transaction():
                pg.execute("set local lock_timeout = '2s'")
                pg.execute(f"drop schema {_ident(old)} cascade")
        except LockNotAvailable:
            left.append(old)
    return left
