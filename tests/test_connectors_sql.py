"""SQL sources against the real PostgreSQL and MariaDB on this machine: full and
incremental loads in batches, upserts of changed rows, and no-op reruns (no new Delta version);
hostile `query:` values refused by config validation, and writes the parser cannot see stopped by the
read-only transaction."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from orchestration.config import ConfigError
from orchestration.ingest import SourceError
from tests.conftest import citylake
from tests.connectors_support import (
    bronze_rows,
    city_yaml,
    mysql_table,
    one_source,
    postgres_table,
    quarantine_rows,
    run,
    version,
)

T0 = dt.datetime(2025, 1, 1, 8, 0)


@pytest.fixture
def pg(monkeypatch):
    """A fresh PostgreSQL table name (dropped after); skips when the server is not reachable."""
    yield from postgres_table(monkeypatch)


@pytest.fixture
def mysql(monkeypatch):
    yield from mysql_table(monkeypatch)


def _sql(conn, statement: str, rows: list[tuple] = ()) -> None:
    cur = conn.cursor()
    if rows:
        cur.executemany(statement, rows)
    else:
        cur.execute(statement)


def _rides(n: int, start: int = 0, at: dt.datetime = T0) -> list[tuple]:
    return [(i, f"stop-{i % 7}", i * 10, at + dt.timedelta(minutes=i)) for i in range(start, start + n)]


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_full_incremental_upsert_and_noop_rerun(kind, request, tmp_path):
    conn, table = request.getfixturevalue("pg" if kind == "postgres" else "mysql")
    marker = "%s"
    _sql(conn, f"create table {table} (id integer primary key, stop text, boardings integer, updated_at timestamp)")
    _sql(conn, f"insert into {table} values ({marker}, {marker}, {marker}, {marker})", _rides(25))
    dsn = "${TEST_PG_DSN}" if kind == "postgres" else "${TEST_MYSQL_DSN}"
    spec = {"kind": kind, "dsn": dsn, "table": table, "primary_key": ["id"], "cursor": "updated_at", "batch_rows": 10}
    cfg, src = one_source(tmp_path, "transport", "rides", spec)

    first = run(cfg, src)
    assert (first.rows_read, first.rows_written, first.row_count) == (25, 25, 25)
    rows = bronze_rows(cfg, src)
    assert [r["boardings"] for r in rows] == [i * 10 for i in range(25)]
    assert {r["_batch"] for r in rows} == {"run-1"} and all(r["_ingested_at"] for r in rows)
    v1 = version(cfg, src)

    # nothing new: only the boundary row is read again, and it equals bronze, so no Delta version
    again = run(cfg, src, "run-2")
    assert again.rows_read == 1 and again.rows_written == 0 and version(cfg, src) == v1

    # 5 new rows and 2 changed rows (their cursor moves past the stored one)
    later = T0 + dt.timedelta(days=1)
    _sql(conn, f"insert into {table} values ({marker}, {marker}, {marker}, {marker})", _rides(5, 25, later))
    _sql(conn, f"update {table} set boardings = 999, updated_at = '{later:%Y-%m-%d %H:%M:%S}' where id in (3, 4)")
    third = run(cfg, src, "run-3")
    assert third.cursor_before.replace(tzinfo=None) == T0 + dt.timedelta(minutes=24)
    assert third.rows_written == 7 and third.row_count == 30
    rows = {r["id"]: r for r in bronze_rows(cfg, src)}
    assert rows[3]["boardings"] == rows[4]["boardings"] == 999 and rows[3]["_batch"] == "run-3"
    assert rows[5]["boardings"] == 50 and rows[5]["_batch"] == "run-1"
    assert len(rows) == 30 and quarantine_rows(cfg, src) == []

    # the bronze gate judges run-3's 7 rows, and the days a load touched are read from them, although the
    # merge that upserted them wrote its files' text columns as string_view (pyarrow's dataset filters
    # cannot compare those: both failed on a table a load had upserted into)
    from orchestration.lake import bronze_uri
    from orchestration.partitions import data_days
    from orchestration.quality import bronze_suite, validate_load

    outcome = validate_load(bronze_suite(src), bronze_uri(cfg, src.agency, src.name), "run-3")
    assert outcome.success and outcome.rows == 7, outcome
    mapped = {**spec, "feeds": "transit_ridership", "columns": {"service_date": "updated_at", "boardings": "boardings"}}
    cfg, src = one_source(tmp_path, "transport", "rides", mapped)  # the same lake, the source now feeding an entity
    day = later.date()
    assert data_days(cfg, [src], batch="run-3") == (day - dt.timedelta(days=1), day + dt.timedelta(days=1))


# ---- source queries: one SELECT, checked by a SQL parser before any run, read in a read-only transaction


def _count(conn, table: str) -> int:
    cur = conn.cursor()
    cur.execute(f"select count(*) from {table}")
    return cur.fetchone()[0]


def _spec(kind: str, query: str) -> dict:
    dsn = "${TEST_PG_DSN}" if kind == "postgres" else "${TEST_MYSQL_DSN}"
    return {"kind": kind, "dsn": dsn, "query": query, "primary_key": ["id"]}


HOSTILE_QUERIES = [
    # MySQL writes a file on the database host: refused by the parser (no read-only transaction stops it)
    ("mysql", "select * from {t} into outfile '{out}'", "refused: SELECT ... INTO writes a file or a table"),
    ("mysql", "select * into dumpfile '{out}' from {t}", "refused: SELECT ... INTO writes a file or a table"),
    ("mysql", "select 1 as id /*!50000 into outfile '{out}' */", "refused: /*! ... */ comments are SQL"),
    # quoting tricks that hid a second statement from the old ';' check
    ("postgres", "select $$'$$ as id; insert into {t} values (99); -- '", "one statement only: 2 statements"),
    ("postgres", "select $q$;$q$ as id; delete from {t}", "one statement only: 2 statements"),
    ("mysql", "select 'a\\'' as id; delete from {t}; -- '", "one statement only: 2 statements"),
    # functions that write, read server files or sleep
    ("postgres", "select nextval('{t}_seq') as id", "refused: nextval() advances a sequence"),
    ("postgres", "select pg_read_file('/etc/passwd') as id", "refused: pg_read_file() reads a file on"),
    ("postgres", "select * from pg_catalog.pg_ls_dir('.') as id", "refused: pg_ls_dir() lists folders"),
    ("postgres", "select pg_sleep(60) as id", "refused: pg_sleep() sleeps"),
    ("mysql", "select load_file('/etc/passwd') as id", "refused: load_file() reads a file on the database server"),
    ("mysql", "select sleep(60) as id", "refused: sleep() sleeps"),
    # writes and locks inside a select
    ("postgres", "with x as (delete from {t} returning id) select id from x", "refused: it holds a write (DELETE)"),
    ("postgres", "select id from {t} for update", "refused: FOR UPDATE / FOR SHARE locks rows"),
    ("postgres", "select id into {t}_copy from {t}", "refused: SELECT ... INTO writes a file or a table"),
    ("postgres", "copy {t} to '{out}'", "a query reads: it starts with select or with; refused: COPY"),
    ("postgres", "select id from {t} where", "refused: it cannot be read as postgres SQL"),
]


@pytest.mark.parametrize(("kind", "query", "message"), HOSTILE_QUERIES)
def test_a_hostile_source_query_is_refused_by_config_validation_before_the_server_sees_it(
    kind, query, message, request, tmp_path
):
    conn, table = request.getfixturevalue("pg" if kind == "postgres" else "mysql")
    _sql(conn, f"create table {table} (id integer primary key)")
    _sql(conn, f"insert into {table} values (1)")
    out = f"/tmp/citylake-{table}.out"
    text = query.format(t=table, out=out)
    with pytest.raises(ConfigError) as err:
        one_source(tmp_path, "transport", "rides", _spec(kind, text))
    assert str(err.value).startswith(f"agencies.transport.rides.query: {message}"), str(err.value)
    assert not os.path.exists(out) and _count(conn, table) == 1


def test_the_quote_tricks_are_real_second_statements_on_the_server(pg, tmp_path):
    """The $$ case above is not a parser false alarm: PostgreSQL runs its hidden statement."""
    conn, table = pg
    _sql(conn, f"create table {table} (id integer primary key)")
    text = f"select $$'$$ as id; insert into {table} values (99); -- '"
    with pytest.raises(ConfigError, match="one statement only"):
        one_source(tmp_path, "transport", "rides", _spec("postgres", text))
    assert _count(conn, table) == 0
    conn.execute(text)  # what the old check let through to the driver
    assert _count(conn, table) == 1


def test_citylake_check_refuses_a_select_into_outfile_before_connecting(mysql, tmp_path):
    conn, table = mysql
    _sql(conn, f"create table {table} (id integer primary key)")
    out = f"/tmp/citylake-{table}.out"
    spec = _spec("mysql", f"select * from {table} into outfile '{out}'")
    config = city_yaml(tmp_path, {"transport": {"rides": spec}})
    proc = citylake("check", config=config, check=False)
    assert proc.returncode != 0
    assert "agencies.transport.rides.query: refused: SELECT ... INTO writes a file or a table" in proc.stderr
    assert not os.path.exists(out)


WRITING_FUNCTION = {
    "postgres": "create function {t}_sneak() returns integer language plpgsql as "
    "$$ begin insert into {t} values (100); return 1; end $$",
    "mysql": "create function {t}_sneak() returns integer modifies sql data not deterministic "
    "begin insert into {t} values (100); return 1; end",
}
READ_ONLY_ERROR = {"postgres": "cannot execute INSERT in a read-only transaction", "mysql": "READ ONLY transaction"}


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_write_the_parser_cannot_see_fails_in_the_read_only_transaction(kind, request, tmp_path):
    conn, table = request.getfixturevalue("pg" if kind == "postgres" else "mysql")
    _sql(conn, f"create table {table} (id integer primary key)")
    _sql(conn, f"insert into {table} values (1)")
    _sql(conn, WRITING_FUNCTION[kind].format(t=table))
    _sql(conn, f"create view {table}_v as select id from {table} where {table}_sneak() = 1")
    try:
        # a query: calling a user-defined function that inserts (the parser cannot know it writes)
        cfg, src = one_source(
            tmp_path / "query", "transport", "rides", _spec(kind, f"select id from {table} where {table}_sneak() = 1")
        )
        with pytest.raises(SourceError, match=READ_ONLY_ERROR[kind]):
            run(cfg, src)
        # a table: source that is a view over the same function
        spec = {**_spec(kind, ""), "table": f"{table}_v"}
        del spec["query"]
        cfg, src = one_source(tmp_path / "table", "transport", "rides", spec)
        with pytest.raises(SourceError, match=READ_ONLY_ERROR[kind]):
            run(cfg, src)
        assert _count(conn, table) == 1
    finally:
        _sql(conn, f"drop view if exists {table}_v")
        _sql(conn, f"drop function if exists {table}_sneak")


VALID_QUERIES = {
    "postgres": "with r as (select a.id, a.n::text as n_text, sum(a.n) over (order by a.id) as running "
    "from {t} a join {t} b on b.id = a.id) select id, n_text, cast(running as integer) as running from r;",
    "mysql": "with r as (select `a`.`id`, cast(`a`.`n` as char) as `n_text`, sum(`a`.`n`) over (order by `a`.`id`) "
    "as `running` from `{t}` `a` join `{t}` `b` on `b`.`id` = `a`.`id`) "
    "select `id`, `n_text`, cast(`running` as signed) as `running` from r -- a comment at the end",
}


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_real_source_queries_with_ctes_joins_casts_and_windows_still_load(kind, request, tmp_path):
    conn, table = request.getfixturevalue("pg" if kind == "postgres" else "mysql")
    _sql(conn, f"create table {table} (id integer primary key, n integer)")
    _sql(conn, f"insert into {table} values (%s, %s)", [(i, i * 10) for i in range(1, 6)])
    spec = {**_spec(kind, VALID_QUERIES[kind].format(t=table)), "cursor": "id"}
    cfg, src = one_source(tmp_path, "transport", "rides", spec)
    assert run(cfg, src).rows_written == 5
    rows = bronze_rows(cfg, src)
    assert [(r["id"], r["n_text"], r["running"]) for r in rows] == [
        (1, "10", 10),
        (2, "20", 30),
        (3, "30", 60),
        (4, "40", 100),
        (5, "50", 150),
    ]
