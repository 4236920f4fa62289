"""What an analyst does: open the catalog without citylake, run the documented example queries, and
use `citylake sql`, which answers queries and refuses everything else with a clear message."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from orchestration.analyst import Printed, QueryError, execute, run_query
from tests.conftest import REPO, CityRun, citylake
from tests.connectors_support import city_yaml

QUERIES = REPO / "docs" / "queries"
MARTS = [
    "indicators",
    "indicator_catalog",
    "mart_air_quality",
    "mart_energy",
    "mart_mobility",
    "mart_safety",
    "mart_service_requests",
    "mart_waste",
]

# a fresh interpreter with only the duckdb package: what an analyst without citylake has
PLAIN_CLIENT = """
import duckdb, json, sys
con = duckdb.connect(sys.argv[1], read_only=True)
tables = dict(con.execute("select table_name, comment from duckdb_tables()").fetchall())
columns = {f"{t}.{c}": x for t, c, x in con.execute(
    "select table_name, column_name, comment from duckdb_columns() where comment is not null").fetchall()}
counts = {t: con.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables}
held = con.execute("select sum(records) from quarantine_summary").fetchone()[0]
print(json.dumps({"tables": tables, "columns": columns, "counts": counts, "held": held,
                  "citylake_imported": "orchestration" in sys.modules}))
"""


def test_the_catalog_opens_in_a_plain_duckdb_client_with_every_table_and_its_docs(city_run: CityRun) -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_CLIENT, str(city_run.catalog)],
        capture_output=True,
        text=True,
        check=True,
        cwd=city_run.root,
    )
    got = json.loads(out.stdout)
    assert not got["citylake_imported"]
    expected = {*MARTS, "dim_district", "quarantine", "quarantine_summary", "_published"}
    assert set(got["tables"]) == expected
    assert all(got["counts"][t] > 0 for t in expected), got["counts"]
    # the summary accounts for every quarantined record, and groups them (fewer rows than records)
    assert got["held"] == got["counts"]["quarantine"] > got["counts"]["quarantine_summary"]

    manifest = json.loads((city_run.state / "dbt" / "target" / "manifest.json").read_text())
    docs = {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    for table in [*MARTS, "dim_district"]:
        assert got["tables"][table] == docs[table]["description"] != "", table
    assert got["columns"]["indicators.coverage"] == docs["indicators"]["columns"]["coverage"]["description"]
    assert got["columns"]["dim_district.district_code"].startswith("The district code")
    assert (
        got["tables"]["quarantine_summary"].startswith("Held-back records counted")
        and got["columns"]["quarantine_summary.records"]
    )


def run_doc_query(run: CityRun, name: str) -> pd.DataFrame:
    """A docs/queries file through `citylake sql -f ... --format json`, as the docs show it."""
    out = citylake("sql", "-f", str(QUERIES / name), "--format", "json", config=run.config).stdout
    return pd.DataFrame(json.loads(out))


@pytest.fixture(scope="module")
def truth(city_run: CityRun) -> pd.DataFrame:
    """The generator's own indicator values, computed independently of the pipeline."""
    return pd.read_csv(city_run.city_dir / "ground_truth.csv", dtype={"area_id": str, "period_start": str})


def test_the_documented_queries_are_all_tested() -> None:
    doc = (REPO / "docs" / "analysts.md").read_text()
    files = sorted(p.name for p in QUERIES.glob("*.sql"))
    assert files == [
        "pm25_trend_by_district.sql",
        "recycling_share_by_month.sql",
        "worst_311_closure_districts.sql",
    ]
    assert all(f"queries/{f}" in doc for f in files)


def test_pm25_trend_by_district_matches_the_ground_truth(city_run: CityRun, truth: pd.DataFrame) -> None:
    got = run_doc_query(city_run, "pm25_trend_by_district.sql")
    want = truth[
        (truth.indicator_id == "iso37120_8_1") & (truth.period_grain == "month") & (truth.area_id != "CITY")
    ].sort_values(["area_id", "period_start"])
    assert len(got) == len(want) == 8 * 3  # eight districts, January to March
    assert list(got.district_code) == list(want.area_id) and list(got.month) == list(want.period_start)
    assert (got.pm25_ugm3 - want.value.round(2).to_numpy()).abs().max() < 0.0051
    first = got[got.district_code == "D01"]
    assert pd.isna(first.change_vs_previous_month.iloc[0])
    assert first.change_vs_previous_month.iloc[1] == pytest.approx(
        first.pm25_ugm3.iloc[1] - first.pm25_ugm3.iloc[0], abs=0.011
    )
    assert got.district_name.notna().all()


def test_worst_311_closure_districts_rank_the_ground_truth(city_run: CityRun, truth: pd.DataFrame) -> None:
    got = run_doc_query(city_run, "worst_311_closure_districts.sql")
    want = truth[
        (truth.indicator_id == "svc_311_median_days_to_close")
        & (truth.period_grain == "year")
        & (truth.area_id != "CITY")
    ].sort_values("value", ascending=False)
    assert len(got) == 8 and list(got["rank"]) == list(range(1, 9))
    assert list(got.district_code) == list(want.area_id)
    assert list(got.median_days_to_close) == list(want.value.round(2))
    assert got.pct_closed_within_target.between(0, 100).all()


def test_recycling_share_by_month_equals_the_citywide_indicator(city_run: CityRun, truth: pd.DataFrame) -> None:
    got = run_doc_query(city_run, "recycling_share_by_month.sql")
    want = truth[
        (truth.indicator_id == "iso37120_16_3") & (truth.area_id == "CITY") & (truth.period_grain == "month")
    ].sort_values("period_start")
    assert list(got.month) == list(want.period_start) and len(got) == 3
    # The query rounds half away from zero, pandas half to even, and a sum of 2-decimal tonnes is often a
    # tie at 1 decimal: equal to within half the last decimal place.
    assert list(got.recycled_pct) == pytest.approx(list(want.value), abs=0.005 + 1e-9)
    assert list(got.collected_tonnes) == pytest.approx(list(want.denominator), abs=0.05 + 1e-9)


def test_citylake_sql_formats_and_limits(city_run: CityRun, tmp_path: Path) -> None:
    query = "select area_id, value from indicators where indicator_id = 'iso37120_8_1' and period_grain = 'year'"
    table = citylake("sql", query + " order by area_id", config=city_run.config).stdout.splitlines()
    assert table[0].split() == ["area_id", "value"] and set(table[1]) == {"-", " "}
    assert table[2].startswith("CITY ") and table[-1] == "(9 rows)"

    limited = citylake("sql", query, "--format", "csv", "--limit", "3", config=city_run.config).stdout
    assert limited.splitlines()[0] == "area_id,value" and len(limited.splitlines()) == 1 + 3

    f = tmp_path / "q.sql"
    f.write_text("-- from a file\n" + query + " and area_id = 'CITY'\n")
    rows = json.loads(citylake("sql", "-f", str(f), "--format", "json", config=city_run.config).stdout)
    assert len(rows) == 1 and rows[0]["area_id"] == "CITY" and 0 < rows[0]["value"] < 100


def test_citylake_sql_errors_show_the_sql_error_and_the_tables(city_run: CityRun) -> None:
    bad = citylake("sql", "select * from indicatorz", config=city_run.config, check=False)
    assert bad.returncode == 1
    assert "Table with name indicatorz does not exist" in bad.stderr
    assert "Tables in the catalog: _published, dim_district, indicator_catalog, indicators," in bad.stderr
    assert "quarantine_summary" in bad.stderr


REFUSED = {
    "drop table indicators": "DROP statements (DDL)",
    "insert into indicators select * from indicators": "INSERT statements (writes)",
    "update indicators set value = 0": "UPDATE statements (writes)",
    "delete from quarantine": "DELETE statements (writes)",
    "create table x as select 1": "CREATE statements (DDL)",
    "create temp table x as select 1": "CREATE statements (DDL)",
    "alter table indicators rename to x": "ALTER statements (DDL)",
    "comment on table indicators is 'x'": "ALTER statements (DDL)",
    "attach '/tmp/other.duckdb' as other": "ATTACH statements (attaching databases)",
    "detach other": "DETACH statements",
    "copy indicators to '/tmp/out.csv'": "COPY statements (COPY)",
    "copy (select 1) to '/tmp/out.parquet' (format parquet)": "COPY statements (COPY)",
    "export database '/tmp/out'": "EXPORT statements (exporting)",
    "install httpfs": "LOAD statements",
    "load httpfs": "LOAD statements",
    "set enable_external_access = true": "SET statements (changing settings)",
    "reset threads": "SET statements",
    "pragma version": "PRAGMA statements",
    "call pragma_version()": "CALL statements",
    "checkpoint": "CALL statements",
    "begin transaction": "TRANSACTION statements",
    "select 1; drop table indicators": "give one query at a time (2 statements",
    "select * from read_csv('/etc/hosts')": "never files",
    "select * from read_parquet('/tmp/x.parquet')": "never files",
    "select * from read_text('/etc/passwd')": "never files",
    "select * from glob('/*')": "never files",
}


def test_citylake_sql_refuses_anything_but_a_query(city_run: CityRun) -> None:
    before = hashlib.sha256(city_run.catalog.read_bytes()).hexdigest()
    for sql, message in REFUSED.items():
        with pytest.raises(QueryError) as err:
            run_query(city_run.catalog, sql)
        assert message in str(err.value), (sql, str(err.value))
        assert "read-only" in str(err.value) or "never files" in str(err.value) or "one query" in str(err.value)
    # words inside strings, identifiers and comments are not statements
    ok = run_query(
        city_run.catalog,
        "select 'drop table x; delete' as \"update\", count(*) as n from quarantine -- insert\n"
        "where reason <> 'copy to attach'",
        fmt="csv",
    )
    assert ok.splitlines()[0] == "update,n" and ok.splitlines()[1].startswith("drop table x; delete,")
    for query in ("describe indicators", "show tables", "summarize mart_waste", "explain select 1"):
        assert run_query(city_run.catalog, query, fmt="csv").count("\n") > 1, query
    pivot = run_query(
        city_run.catalog,
        "pivot (select area_id, indicator_id, value from indicators where period_grain = 'year' "
        "and indicator_id in ('iso37120_8_1', 'iso37120_8_2')) on indicator_id using first(value) order by area_id",
        fmt="csv",
    )
    assert pivot.splitlines()[0] == "area_id,iso37120_8_1,iso37120_8_2" and len(pivot.splitlines()) == 10
    # and through the command line, the message is what the user sees
    refused = citylake("sql", "copy indicators to 'out.csv'", config=city_run.config, check=False)
    assert refused.returncode == 1 and "refused: COPY statements" in refused.stderr
    assert not (city_run.root / "out.csv").exists()
    assert hashlib.sha256(city_run.catalog.read_bytes()).hexdigest() == before


# ---- bounds and output safety, on a small catalog of its own (no pipeline run needed)


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A city.yaml whose catalog holds one table of hostile text values; returns the config path."""
    root = tmp_path_factory.mktemp("small-catalog")
    spec = {"kind": "files", "path": "./drop/*.csv", "format": "csv", "primary_key": ["id"]}
    config = city_yaml(root, {"energy": {"meters": spec}})
    (root / "lake").mkdir()
    con = duckdb.connect(str(root / "lake" / "catalog.duckdb"))
    con.execute("create table notes (id integer, note varchar)")
    con.executemany(
        "insert into notes values (?, ?)",
        [
            (1, "two\nlines"),
            (2, "\x1b[2J\x1b[31mred\x07"),
            (3, '=HYPERLINK("http://x","y")'),
            (4, "+1+1"),
            (5, "-2+3"),
            (6, "@SUM(A1)"),
            (7, "\t=1"),
            (8, "plain"),
        ],
    )
    con.close()
    return config


def test_citylake_sql_prints_10000_rows_by_default_and_says_when_it_cut(small_catalog: Path) -> None:
    query = "select i from range(25000) t(i)"
    default = citylake("sql", query, "--format", "csv", config=small_catalog)
    assert default.stdout.splitlines() == ["i", *map(str, range(10_000))]
    assert "showed the first 10000 rows; the query returns more (--limit N for more, --limit 0 for all)" in (
        default.stderr
    )
    every = citylake("sql", query, "--format", "csv", "--limit", "0", config=small_catalog)
    assert len(every.stdout.splitlines()) == 1 + 25_000 and "showed the first" not in every.stderr
    few = citylake("sql", query, "--limit", "3", config=small_catalog)
    assert few.stdout.splitlines()[-1] == "(3 rows)" and "showed the first 3 rows" in few.stderr
    exact = citylake("sql", "select i from range(3) t(i)", "--limit", "3", config=small_catalog)
    assert exact.stdout.splitlines()[-1] == "(3 rows)" and exact.stderr == ""


def test_the_row_limit_bounds_the_fetch_of_an_endless_result(small_catalog: Path) -> None:
    # a trillion rows: only the rows printed are fetched, so this ends at once in little memory
    t0 = time.monotonic()
    out = citylake("sql", "select i, repeat('x', 100) as pad from range(1000000000000) t(i)", config=small_catalog)
    assert out.stdout.splitlines()[-1] == "(10000 rows)" and time.monotonic() - t0 < 60
    got: list[str] = []
    printed = execute(
        citylake_catalog(small_catalog), "select i from range(1000000000000) t(i)", got.append, fmt="csv", limit=5
    )
    assert printed == Printed(rows=5, cut=True) and "".join(got) == "i\n0\n1\n2\n3\n4\n"


def citylake_catalog(config: Path) -> Path:
    return config.parent / "lake" / "catalog.duckdb"


def test_citylake_sql_stops_a_query_at_its_time_limit(small_catalog: Path) -> None:
    t0 = time.monotonic()
    slow = citylake(
        "sql", "select count(*) from range(1000000000000)", "--timeout", "2", config=small_catalog, check=False
    )
    took = time.monotonic() - t0
    assert slow.returncode == 1 and took < 30, took
    assert "stopped: the query ran longer than the 2 s time limit and was interrupted" in slow.stderr
    assert "--timeout SECONDS" in slow.stderr


def test_citylake_sql_stops_a_query_at_its_memory_limit(small_catalog: Path) -> None:
    big = citylake(
        "sql",
        "select count(distinct i::varchar || 'padding-padding') from range(50000000) t(i)",
        "--memory-limit",
        "64MB",
        config=small_catalog,
        check=False,
    )
    assert big.returncode == 1
    assert "stopped: the query needs more memory than the 64MB limit (Out of Memory Error" in big.stderr
    assert "--memory-limit" in big.stderr
    bad = citylake("sql", "select 1", "--memory-limit", "lots", config=small_catalog, check=False)
    assert bad.returncode == 1 and "--memory-limit 'lots': give a size such as 500MB" in bad.stderr


EXPLAINED = {
    "explain analyze insert into notes values (9, 'x')": "INSERT statements (writes)",
    "explain analyze delete from notes": "DELETE statements (writes)",
    "EXPLAIN (ANALYZE) create table x as select 1": "CREATE statements (DDL)",
    "explain /* a comment */ analyse copy notes to 'out.csv'": "COPY statements (COPY)",
    "explain update notes set note = 'x'": "UPDATE statements (writes)",
    "explain drop table notes": "DROP statements (DDL)",
    "explain pragma version": "PRAGMA statements",
}


def test_explain_of_a_refused_statement_is_refused(small_catalog: Path) -> None:
    catalog = citylake_catalog(small_catalog)
    for sql, message in EXPLAINED.items():
        with pytest.raises(QueryError) as err:
            run_query(catalog, sql)
        assert str(err.value).startswith("refused: EXPLAIN runs or plans its statement, which is refused: "), sql
        assert message in str(err.value), (sql, str(err.value))
    for sql in (
        "explain select * from notes",
        "explain analyze select count(*) from notes",
        "-- c\nexplain from notes",
    ):
        assert "_plan" in run_query(catalog, sql, fmt="csv"), sql
    refused = citylake("sql", "explain analyze insert into notes values (9, 'x')", config=small_catalog, check=False)
    assert refused.returncode == 1 and "which is refused: INSERT statements (writes)" in refused.stderr
    assert not (small_catalog.parent / "out.csv").exists()


def test_table_output_shows_newlines_and_terminal_escapes_escaped(small_catalog: Path) -> None:
    out = citylake("sql", 'select id, note as "a\nb" from notes where id <= 2 order by id', config=small_catalog).stdout
    lines = out.splitlines()
    assert len(lines) == 5 and lines[-1] == "(2 rows)"  # header, rule, two rows, count: no faked rows
    assert lines[0].split() == ["id", "a\\nb"]
    assert lines[2].split() == ["1", "two\\nlines"]
    assert lines[3].split() == ["2", "\\x1b[2J\\x1b[31mred\\x07"]
    assert "\x1b" not in out and "\x07" not in out


def test_csv_output_guards_spreadsheet_formulas_unless_raw_is_asked(small_catalog: Path) -> None:
    query = "select id, note, -1.5 as n from notes where id >= 3 order by id"
    safe = citylake("sql", query, "--format", "csv", config=small_catalog).stdout
    rows = list(csv.reader(io.StringIO(safe)))
    assert rows == [
        ["id", "note", "n"],
        ["3", '\'=HYPERLINK("http://x","y")', "-1.5"],
        ["4", "'+1+1", "-1.5"],
        ["5", "'-2+3", "-1.5"],
        ["6", "'@SUM(A1)", "-1.5"],
        ["7", "'\t=1", "-1.5"],
        ["8", "plain", "-1.5"],
    ]
    raw = citylake("sql", query, "--format", "csv", "--raw-csv", config=small_catalog).stdout
    assert [r[1] for r in csv.reader(io.StringIO(raw))][1:] == [
        '=HYPERLINK("http://x","y")',
        "+1+1",
        "-2+3",
        "@SUM(A1)",
        "\t=1",
        "plain",
    ]
