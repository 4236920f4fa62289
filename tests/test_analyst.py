"""What an analyst does: open the catalog without citylake, run the documented example queries, and
use `citylake sql`, which answers queries and refuses everything else with a clear message."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from orchestration.analyst import QueryError, run_query
from tests.conftest import REPO, CityRun, citylake

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
