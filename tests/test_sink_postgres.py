"""The PostgreSQL sink against the real server on this machine (127.0.0.1:5432, trust auth, database
`test`): tables, values, comments, the read-only role, and an atomic swap that readers never block.
Skipped, with the reason, when no server answers there."""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import yaml

from orchestration.config import ConfigError, load_config
from orchestration.publish import build_catalog
from tests.conftest import CityRun, citylake

DSN = os.environ.get("CITYLAKE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3")
SCHEMA = f"citylake_test_{os.getpid()}"
READER = f"citylake_test_reader_{os.getpid()}"


def _server() -> str | None:
    try:
        import psycopg

        with psycopg.connect(DSN) as pg:
            pg.execute("select 1")
    except Exception as exc:  # noqa: BLE001 - any failure to connect means: no server to test against
        return f"PostgreSQL is not reachable at {DSN} ({type(exc).__name__}: {str(exc).strip()[:120]})"
    return None


pg_required = pytest.mark.skipif(bool(_server()), reason=_server() or "")


@pytest.fixture
def pg():
    """A superuser connection (autocommit); drops the test schemas and role afterwards."""
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as con:
        yield con
        for (name,) in con.execute("select nspname from pg_namespace where nspname like %s", [SCHEMA + "%"]).fetchall():
            con.execute(f'drop schema "{name}" cascade')
        if con.execute("select 1 from pg_roles where rolname = %s", [READER]).fetchone():
            con.execute(f'drop role "{READER}"')


def sink() -> dict:
    return {"dsn": DSN, "schema": SCHEMA, "reader_role": READER}


@pg_required
def test_the_catalog_is_published_to_postgres_with_a_read_only_role(city_run: CityRun, pg) -> None:
    import psycopg

    from orchestration.sinks.postgres import publish_to_postgres

    result = publish_to_postgres(city_run.catalog, sink())
    con = duckdb.connect(str(city_run.catalog), read_only=True)
    try:
        expected = {
            t: con.execute(f'select count(*) from "{t}"').fetchone()[0]
            for (t,) in con.execute(
                "select table_name from duckdb_tables() where table_name <> 'quarantine'"
            ).fetchall()
        }
        pm25 = con.execute("select sum(value), count(*) from indicators where indicator_id = 'iso37120_8_1'").fetchone()
        description = con.execute("select comment from duckdb_tables() where table_name = 'indicators'").fetchone()[0]
    finally:
        con.close()
    assert set(result.tables) == set(expected) and "quarantine_summary" in expected and "mart_waste" in expected
    assert result.rows == expected
    for table, n in expected.items():
        assert pg.execute(f'select count(*) from {SCHEMA}."{table}"').fetchone()[0] == n, table
    got = pg.execute(f"select sum(value), count(*) from {SCHEMA}.indicators where indicator_id = 'iso37120_8_1'")
    total, count = got.fetchone()
    assert count == pm25[1] and total == pytest.approx(pm25[0], rel=1e-12)
    types = dict(
        pg.execute(
            "select column_name, data_type from information_schema.columns where table_schema = %s "
            "and table_name = 'indicators'",
            [SCHEMA],
        ).fetchall()
    )
    assert types["period_start"] == "date" and types["value"] == "double precision" and types["area_id"] == "text"
    assert pg.execute(f"select obj_description('{SCHEMA}.indicators'::regclass)").fetchone()[0] == description

    # the analysts' role reads and cannot write, create or delete
    with pg.transaction():
        pg.execute(f'set local role "{READER}"')
        assert pg.execute(f"select count(*) from {SCHEMA}.indicators").fetchone()[0] == expected["indicators"]
    for statement in (
        f"insert into {SCHEMA}.indicators (indicator_id) values ('x')",
        f"delete from {SCHEMA}.mart_waste",
        f"create table {SCHEMA}.mine (i int)",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), pg.transaction():
            pg.execute(f'set local role "{READER}"')
            pg.execute(statement)
    assert pg.execute(f"select count(*) from {SCHEMA}.mart_waste").fetchone()[0] == expected["mart_waste"]


def version_catalog(path: Path, version: int, bad: bool = False) -> Path:
    """A small catalog whose every row says which publication it came from."""
    text = "broken\x00" if bad else "ok"  # PostgreSQL text cannot hold NUL: the load fails half-way
    build_catalog(
        path,
        {
            "a": pa.table({"version": [version] * 1000}),
            "b": pa.table({"version": [version] * 10, "note": [text] * 10}),
        },
        {"a": {"description": f"table a, version {version}"}},
        {"version": version},
    )
    return path


@pg_required
def test_the_swap_is_atomic_and_never_waits_for_a_reader(tmp_path: Path, pg) -> None:
    import psycopg

    from orchestration.sinks.postgres import publish_to_postgres

    publish_to_postgres(version_catalog(tmp_path / "v1.duckdb", 1), sink())
    # a BI tool, in its own server process, mid-transaction on the live tables
    with psycopg.connect(DSN, autocommit=True) as reader:
        reader.execute("begin isolation level repeatable read")
        assert reader.execute(f"select max(version), count(*) from {SCHEMA}.a").fetchone() == (1, 1000)

        t0 = time.perf_counter()
        result = publish_to_postgres(version_catalog(tmp_path / "v2.duckdb", 2), sink())
        took = time.perf_counter() - t0
        assert took < 15, f"the swap waited {took:.1f} s for the reader"
        # the old schema is still in use by the reader: left in place, not waited for
        assert len(result.stale_schemas_left) == 1
        # new sessions see version 2 in both tables at once; the reader's snapshot keeps version 1
        assert pg.execute(f"select max(version) from {SCHEMA}.a").fetchone()[0] == 2
        assert pg.execute(f"select min(version), max(version) from {SCHEMA}.b").fetchone() == (2, 2)
        assert reader.execute(f"select max(version) from {result.stale_schemas_left[0]}.a").fetchone()[0] == 1
        reader.execute("commit")

    # a publication that fails half-way (the second table cannot load) changes nothing
    with pytest.raises(psycopg.errors.DataError):
        publish_to_postgres(version_catalog(tmp_path / "v3.duckdb", 3, bad=True), sink())
    assert pg.execute(f"select max(version) from {SCHEMA}.a").fetchone()[0] == 2
    assert pg.execute(f"select max(version), min(note) from {SCHEMA}.b").fetchone() == (2, "ok")
    # the next good publication also drops the schema the reader held
    result = publish_to_postgres(version_catalog(tmp_path / "v4.duckdb", 4), sink())
    assert result.stale_schemas_left == []
    schemas = [r[0] for r in pg.execute("select nspname from pg_namespace where nspname like %s", [SCHEMA + "%"])]
    assert schemas == [SCHEMA]
    assert pg.execute(f"select max(version) from {SCHEMA}.a").fetchone()[0] == 4


def write_config(run: CityRun, tmp_path: Path, sinks: object) -> Path:
    cfg = yaml.safe_load(run.config.read_text())
    cfg["sinks"] = sinks
    # relative paths in city.yaml are relative to the file: keep the run's folder as its home
    path = run.root / f"city-sinks-{tmp_path.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_sinks_config_is_validated_with_the_key_and_the_fix(city_run: CityRun, tmp_path: Path) -> None:
    good = load_config(write_config(city_run, tmp_path, {"postgres": {"dsn": "${CITYLAKE_PG_DSN}"}}))
    assert good.sinks == {"postgres": {"dsn": "${CITYLAKE_PG_DSN}", "schema": "citylake"}}
    assert load_config(city_run.config).sinks == {}
    cases = {
        "sinks.bigquery: unknown key; use postgres": {"bigquery": {"dsn": "x"}},
        "sinks.postgres.dsn is missing: the connection string, e.g. dsn: ${CITYLAKE_PG_DSN}": {"postgres": {}},
        "sinks.postgres.schema: a PostgreSQL name, lower_snake_case": {
            "postgres": {"dsn": "x", "schema": "Drop Table"}
        },
        "sinks.postgres.table: unknown key": {"postgres": {"dsn": "x", "table": "t"}},
        "sinks must be a mapping": ["postgres"],
    }
    for message, sinks in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(write_config(city_run, tmp_path, sinks))
        assert message in str(err.value), (message, str(err.value))


@pg_required
def test_citylake_run_publishes_to_postgres_when_city_yaml_has_the_sink(
    city_run: CityRun, tmp_path: Path, pg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYLAKE_PG_DSN", DSN)
    config = write_config(
        city_run, tmp_path, {"postgres": {"dsn": "${CITYLAKE_PG_DSN}", "schema": SCHEMA, "reader_role": READER}}
    )
    proc = citylake("run", "--select", 'key:"published/postgres"', config=config)
    assert "materialized published/postgres" in proc.stderr
    con = duckdb.connect(str(city_run.catalog), read_only=True)
    try:
        indicators, run_id = con.execute(
            "select (select count(*) from indicators), (select value from _published where key = 'run_id')"
        ).fetchone()
    finally:
        con.close()
    assert pg.execute(f"select count(*) from {SCHEMA}.indicators").fetchone()[0] == indicators
    assert pg.execute(f"select value from {SCHEMA}._published where key = 'run_id'").fetchone()[0] == run_id
