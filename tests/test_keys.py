"""A record's identity: composite keys never collide whatever their values hold, and a key's identity is
its typed value (orchestration/keys.py), in ingestion (bronze, quarantine) and in the staging SQL alike."""

from __future__ import annotations

import json
import sqlite3

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestration.keys import key_sql, key_text
from tests.connectors_support import bronze_rows, one_source, quarantine_rows, run

parts = st.text(alphabet="ab|\\ 1", max_size=4)


@settings(max_examples=400, deadline=None)
@given(st.tuples(parts, parts, parts), st.tuples(parts, parts, parts))
def test_distinct_composite_keys_never_share_a_text(a, b):
    # the old rule ('|'.join) gave ('A|b', 'c') and ('A', 'b|c') one text
    assert (key_text(a) == key_text(b)) == (a == b)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(parts, parts), min_size=1, max_size=8))
def test_the_staging_sql_writes_the_same_key_text_as_ingestion(rows):
    con = duckdb.connect()
    con.execute("create table t (k1 varchar, k2 varchar)")
    con.executemany("insert into t values (?, ?)", rows)
    got = [r[0] for r in con.execute(f"select {key_sql(['k1', 'k2'])} from t").fetchall()]
    assert got == [key_text(r) for r in rows]
    assert con.execute(f"select {key_sql(['k1'])} from t").fetchall() == [(r[0],) for r in rows]


def test_composite_keys_with_the_separator_stay_two_records(tmp_path):
    """('A|b', 'c') and ('A', 'b|c') are two records in bronze and in quarantine's key text."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_text('zone,seq,n\n"A|b",c,1\nA,"b|c",2\nA,"b|c",3\n')
    spec = {"kind": "files", "path": "./drop/*.csv", "format": "csv", "primary_key": ["zone", "seq"]}
    cfg, src = one_source(tmp_path, "transport", "counts", spec)
    run(cfg, src)
    rows = sorted((r["zone"], r["seq"], r["n"]) for r in bronze_rows(cfg, src))
    assert rows == [("A", "b|c", "2"), ("A|b", "c", "1")]
    (dupe,) = quarantine_rows(cfg, src)
    assert dupe["record_key"] == "A|b\\|c"
    assert dupe["reason"] == "duplicate primary key A|b\\|c in one load (first kept)"


def test_an_api_record_repeated_across_pages_is_kept_once_per_typed_key(tmp_path):
    """Records seen on two pages keep their last version per key tuple, not per joined text."""
    import pyarrow as pa

    from orchestration.ingest import _last_per_key

    table = pa.table({"k1": ["A|b", "A", "A|b"], "k2": ["c", "b|c", "c"], "v": [1, 2, 3]})
    kept = _last_per_key(table, ("k1", "k2")).to_pylist()
    assert sorted((r["k1"], r["k2"], r["v"]) for r in kept) == [("A", "b|c", 2), ("A|b", "c", 3)]


def test_a_text_key_that_would_become_another_integer_is_quarantined(tmp_path):
    """SQLite is typed per value: a row whose integer key arrives as text '01' is not row 1."""
    db = tmp_path / "meters.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("create table readings (meter, kwh, updated)")
        con.execute("insert into readings values (1, 10, '2025-01-01'), (2, 20, '2025-01-01')")
    spec = {"kind": "sqlite", "path": "./meters.sqlite", "table": "readings"}
    spec |= {"primary_key": ["meter"], "cursor": "updated"}
    cfg, src = one_source(tmp_path, "energy", "meters", spec)
    run(cfg, src)
    with sqlite3.connect(db) as con:
        con.execute("insert into readings values ('01', 99, '2025-01-02')")
        con.execute("update readings set kwh = 21, updated = '2025-01-03' where meter = 2")
    run(cfg, src, batch="run-2")
    rows = sorted((r["meter"], r["kwh"]) for r in bronze_rows(cfg, src))
    assert rows == [(1, 10), (2, 21)]  # read again with '01' in its batch, as text: still the integers
    (held,) = quarantine_rows(cfg, src)
    assert json.loads(held["record"])["meter"] == "01"
    assert "key text '01' would become the integer 1" in held["reason"]


def test_json_numbers_are_numbers_in_keys(tmp_path):
    """A sensor id sent as 101 and as 101.0 is one sensor: a repeat in one load, not a second station."""
    drop = tmp_path / "drop"
    drop.mkdir()
    lines = [
        {"sensor": 101, "t": "2025-01-01T00:00:00Z", "pm25": 10.0},
        {"sensor": 101.0, "t": "2025-01-01T01:00:00Z", "pm25": 20.5},
        {"sensor": 101.0, "t": "2025-01-01T00:00:00Z", "pm25": 11.0},
    ]
    (drop / "a.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    spec = {"kind": "files", "path": "./drop/*.jsonl", "format": "jsonl", "primary_key": ["sensor", "t"]}
    cfg, src = one_source(tmp_path, "environment", "air", spec)
    run(cfg, src)
    assert sorted((r["sensor"], r["pm25"]) for r in bronze_rows(cfg, src)) == [("101", "10"), ("101", "20.5")]
    (dupe,) = quarantine_rows(cfg, src)
    assert dupe["reason"] == "duplicate primary key 101|2025-01-01T00:00:00Z in one load (first kept)"


def test_local_times_around_dst_are_read_as_documented():
    """docs/reliability.md: a wall time that does not exist (spring forward) is read with the offset before
    the change (02:30 CST = 03:30 CDT); an ambiguous one (fall back) as its later, standard-time instant."""
    from pathlib import Path

    import jinja2

    macros = (Path(__file__).resolve().parent.parent / "dbt_project" / "macros" / "citylake_time.sql").read_text()
    env = jinja2.Environment()
    env.globals["var"] = {"city_timezone": "America/Chicago"}.get
    # (the DuckDB form of the dispatched macro; tests/test_dbt_sail.py checks the Spark one on Sail)
    to_utc = env.from_string(macros).module.duckdb__citylake_to_utc
    con = duckdb.connect()
    con.execute("set timezone = 'UTC'")
    expression = to_utc("raw", "America/Chicago")
    got = con.execute(
        f"select raw, cast({expression} as varchar) from (values ('2025-03-09 02:30:00'), ('2025-11-02 01:30:00'),"
        " ('2025-11-02 00:30:00'), ('2025-03-09 03:30:00')) as t(raw) order by raw"
    ).fetchall()
    assert got == [
        ("2025-03-09 02:30:00", "2025-03-09 08:30:00+00"),  # does not exist: read as CST, = 03:30 CDT
        ("2025-03-09 03:30:00", "2025-03-09 08:30:00+00"),
        ("2025-11-02 00:30:00", "2025-11-02 05:30:00+00"),
        ("2025-11-02 01:30:00", "2025-11-02 07:30:00+00"),  # twice that night: the later (CST) instant
    ]


def test_a_date_alone_is_the_city_s_calendar_day_whatever_the_source_zone():
    """A daily mean dated 2021-01-01 by a source in Kathmandu belongs to 1 January in a Chicago city
    (PRODUCT: a date without a time belongs to that local date), not to 31 December."""
    from pathlib import Path

    import jinja2

    macros = (Path(__file__).resolve().parent.parent / "dbt_project" / "macros" / "citylake_time.sql").read_text()
    env = jinja2.Environment()
    env.globals["var"] = {"city_timezone": "America/Chicago"}.get
    module = env.from_string(macros).module
    con = duckdb.connect()
    con.execute("set timezone = 'UTC'")
    instant = module.duckdb__citylake_to_utc("raw", "Asia/Kathmandu")
    local_day = module.duckdb__citylake_local_date(instant)
    got = con.execute(
        f"select cast({instant} as varchar), {local_day} from (values ('2021-01-01'), ('2021-01-01 00:30')) t(raw)"
    ).fetchall()
    import datetime as dt

    assert got == [
        ("2021-01-01 06:00:00+00", dt.date(2021, 1, 1)),  # the city's midnight
        ("2020-12-31 18:45:00+00", dt.date(2020, 12, 31)),  # a wall time stays the source's own
    ]
