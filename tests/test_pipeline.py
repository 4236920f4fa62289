"""End to end: the reference city through bronze, dbt, the quality gates and publication."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tests.conftest import CityRun, citylake

KEY = ["indicator_id", "area_id", "period_grain", "period_start"]
MEASURES = ["value", "numerator", "denominator", "coverage"]


def published_indicators(run: CityRun) -> pd.DataFrame:
    con = duckdb.connect(str(run.catalog), read_only=True)
    try:
        return con.sql("select * replace (cast(period_start as varchar) as period_start) from indicators").df()
    finally:
        con.close()


def assert_equal_to_ground_truth(run: CityRun) -> pd.DataFrame:
    """The published indicators, asserted equal (to 1e-9) to the generator's ground truth."""
    truth = pd.read_csv(run.city_dir / "ground_truth.csv", dtype={"area_id": str, "period_start": str})
    got = published_indicators(run)
    merged = truth.merge(got, on=KEY, how="outer", suffixes=("_truth", "_got"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged.loc[merged["_merge"] != "both", [*KEY, "_merge"]]
    assert len(merged) == len(truth) > 100
    for m in MEASURES:
        a, b = merged[f"{m}_truth"], merged[f"{m}_got"]
        both_null = a.isna() & b.isna()
        close = (a - b).abs() <= 1e-9 * (1 + a.abs())
        bad = merged.loc[~(both_null | close), [*KEY, f"{m}_truth", f"{m}_got"]]
        assert bad.empty, f"{m} differs from ground truth:\n{bad.head(10)}"
    return got


def test_indicators_equal_the_generators_ground_truth(city_run: CityRun) -> None:
    got = assert_equal_to_ground_truth(city_run)
    assert set(got["indicator_id"]) >= {
        "iso37120_8_1",
        "iso37120_8_4",
        "iso37120_7_5",
        "iso37120_16_3",
        "iso37120_18_3",
        "iso37120_18_8",
        "svc_311_median_days_to_close",
    }
    assert set(got["period_grain"]) == {"month", "year"} and "CITY" in set(got["area_id"])


def quarantine_keys(run: CityRun) -> set[tuple[str, str]]:
    con = duckdb.connect(str(run.catalog), read_only=True)
    try:
        rows = con.sql("select source_name, record_key from quarantine").fetchall()
    finally:
        con.close()
    return {(s, k) for s, k in rows}


def test_every_bad_record_is_in_quarantine_and_none_reaches_the_facts(city_run: CityRun) -> None:
    with open(city_run.city_dir / "bad_records.csv", newline="") as f:
        bad = list(csv.DictReader(f))
    assert len(bad) >= 20
    quarantined = quarantine_keys(city_run)
    by_source = {}
    for s, k in quarantined:
        by_source.setdefault(s, set()).add(k)
    missing = []
    for row in bad:
        source = row["source"].split("/")[1]
        keys = by_source.get(source, set())
        # an unreadable line has no key: it is quarantined by file and line
        if not (row["record_key"] in keys or any(k.endswith("/" + row["record_key"]) for k in keys)):
            missing.append(row)
    assert not missing, missing[:5]
    # and nothing else was held back: the clean records all flow
    assert len(quarantined) == len(bad)

    con = duckdb.connect(str(city_run.warehouse), read_only=True)
    try:
        facts = {
            "collisions": "fct_road_collisions",
            "requests": "fct_service_requests",
            "ridership": "fct_transit_ridership",
            "meter_readings": "fct_energy_consumption",
            "collections": "fct_waste_collection",
            "air_vendor_a": "fct_air_quality_observations",
            "air_vendor_b": "fct_air_quality_observations",
        }
        for row in bad:
            source = row["source"].split("/")[1]
            if row["kind"] == "duplicate":
                n = con.execute(
                    f"select count(*) from {facts[source]} where source_name = ? and record_key = ?",
                    [source, row["record_key"]],
                ).fetchone()[0]
                assert n == 1, f"duplicate {row['record_key']} counted {n} times"
            else:
                n = con.execute(
                    f"select count(*) from {facts[source]} where source_name = ? and record_key = ?",
                    [source, row["record_key"]],
                ).fetchone()[0]
                assert n == 0, f"bad record {row} reached {facts[source]}"
        max_pm25 = con.execute("select max(pm25), min(pm25) from fct_air_quality_observations").fetchone()
        assert 0 <= max_pm25[1] and max_pm25[0] < 1000
    finally:
        con.close()


def test_district_population_has_one_type_in_both_dimensions(city_run: CityRun) -> None:
    """dim_district.population (the latest census, via a DuckDB sum for CITY) is bigint like the census table."""
    con = duckdb.connect(str(city_run.warehouse), read_only=True)
    try:
        types = con.execute(
            "select table_name, data_type from information_schema.columns where column_name = 'population' "
            "and table_name in ('dim_district', 'dim_district_population') order by table_name"
        ).fetchall()
        joined = con.execute(
            "select count(*) from dim_district d join dim_district_population p "
            "on p.district_code = d.district_code and p.census_year = d.population_year and p.population = d.population"
        ).fetchall()
        districts = con.execute("select count(*) from dim_district where population is not null").fetchall()
    finally:
        con.close()
    assert types == [("dim_district", "BIGINT"), ("dim_district_population", "BIGINT")]
    assert joined == districts and districts[0][0] > 0


def test_published_delta_marts_match_the_catalog(city_run: CityRun) -> None:
    from deltalake import DeltaTable

    con = duckdb.connect(str(city_run.catalog), read_only=True)
    try:
        for mart in (
            "indicators",
            "indicator_catalog",
            "mart_air_quality",
            "mart_energy",
            "mart_waste",
            "mart_mobility",
            "mart_safety",
            "mart_service_requests",
        ):
            delta = DeltaTable(str(city_run.lake / "marts" / mart)).to_pyarrow_table()
            n = con.execute(f"select count(*) from {mart}").fetchone()[0]
            assert delta.num_rows == n > 0, mart
        published = dict(con.execute("select key, value from _published").fetchall())
        assert json.loads(published["city"]) == "Riverton"
    finally:
        con.close()


def test_a_plain_duckdb_client_reads_the_catalog(city_run: CityRun) -> None:
    """No citylake import, a fresh process: what an analyst's DuckDB does."""
    code = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
        'print(con.execute("select count(*), count(distinct indicator_id) from indicators '
        "where area_id = 'CITY'\").fetchone())"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, str(city_run.catalog)], capture_output=True, text=True, check=True
    )
    rows, indicators = eval(out.stdout)
    assert rows > 20 and indicators == 12


def test_citylake_sql_answers_from_the_catalog(city_run: CityRun) -> None:
    out = citylake(
        "sql",
        "select area_id, round(value, 3) as v from indicators where indicator_id = "
        "'iso37120_8_1' and period_grain = 'year' order by area_id",
        "--format",
        "csv",
        config=city_run.config,
    ).stdout.splitlines()
    assert out[0] == "area_id,v"
    assert out[1].startswith("CITY,") and len(out) == 1 + 9  # CITY and the eight districts
    refused = citylake("sql", "drop table indicators", config=city_run.config, check=False)
    assert refused.returncode != 0 and "read-only" in refused.stderr


@pytest.fixture(scope="session")
def second_run(city_run: CityRun) -> dict:
    """Counts before and after running everything a second time on the same sources."""
    before = lake_counts(city_run)
    indicators = published_indicators(city_run)
    citylake("run", config=city_run.config)
    return {"before": before, "after": lake_counts(city_run), "indicators": indicators}


def lake_counts(run: CityRun) -> dict[str, int]:
    from deltalake import DeltaTable

    counts = {}
    for layer in ("bronze", "quarantine", "marts"):
        for path in sorted((run.lake / layer).rglob("_delta_log")):
            table = path.parent
            counts[str(table.relative_to(run.lake))] = DeltaTable(str(table)).to_pyarrow_dataset().count_rows()
    return counts


def test_running_twice_duplicates_nothing(city_run: CityRun, second_run: dict) -> None:
    before, after = second_run["before"], second_run["after"]
    assert len(before) >= 7 + 7 + 8
    assert before == after
    again = published_indicators(city_run)
    pd.testing.assert_frame_equal(
        second_run["indicators"].sort_values(KEY).reset_index(drop=True), again.sort_values(KEY).reset_index(drop=True)
    )


def test_assets_show_schema_preview_and_partition_range_in_the_ui(city_run: CityRun, monkeypatch) -> None:
    """What the Dagster UI shows: a bronze table's schema and first rows; the days a daily asset was built for."""
    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", str(city_run.state / "dagster"))
    with dg.DagsterInstance.get() as instance:
        bronze = instance.get_latest_materialization_event(dg.AssetKey(["bronze", "transport", "ridership"]))
        fact = instance.get_latest_materialization_event(dg.AssetKey(["conformed", "fct_transit_ridership"]))
    meta = bronze.asset_materialization.metadata
    columns = [c.name for c in meta["dagster/column_schema"].value.columns]
    assert {"stop_id", "service_date", "boardings", "_ingested_at", "_batch"} <= set(columns)
    preview = meta["preview"].value.splitlines()
    assert preview[0].startswith("| stop_id") and len(preview) == 2 + 5
    assert meta["delta_version"].value >= 0 and meta["dagster/row_count"].value > 0
    first, last = fact.asset_materialization.metadata["partition_range"].value.split("..")
    # the run covered every day the data has (a day of margin each side), history from partitions.start
    assert first <= "2025-01-20" and last >= "2025-03-20"
    assert fact.asset_materialization.partition is not None

    # bounded bookkeeping: each run over many days planned each daily asset once (one event holding the range),
    # though it materialized it once per day
    ranged = [
        p
        for p in (city_run.state / "dagster" / "history" / "runs").glob("*.db")
        if p.name != "index.db" and _events(p, "ASSET_MATERIALIZATION", "fct_transit_ridership") > 1
    ]
    assert ranged and all(_events(p, "ASSET_MATERIALIZATION", "fct_transit_ridership") >= 60 for p in ranged)
    assert [_events(p, "ASSET_MATERIALIZATION_PLANNED", "fct_transit_ridership") for p in ranged] == [1] * len(ranged)


def _events(run_db: Path, kind: str, asset: str) -> int:
    """How many events of `kind` for `asset` a run's SQLite event log holds."""
    import sqlite3

    with sqlite3.connect(run_db) as con:
        return con.execute(
            "select count(*) from event_logs where dagster_event_type = ? and asset_key like ?", [kind, f"%{asset}%"]
        ).fetchone()[0]


def test_the_conform_sensor_rebuilds_the_days_new_loads_touched(city_run: CityRun) -> None:
    """conform_new_loads over the session's loads: one run over exactly the days their rows fall on."""
    code = """
import json, dagster as dg
from orchestration.definitions import defs
sensor = next(s for s in defs.sensors if s.name == "conform_new_loads")
with dg.DagsterInstance.get() as instance:
    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=None))
    again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor="0"))
print(json.dumps({"first": [first.cursor, len(first.run_requests)], "tags": [r.tags for r in again.run_requests]}))
"""
    import os

    env = {**os.environ, "CITYLAKE_CONFIG": str(city_run.config), "DAGSTER_HOME": str(city_run.state / "dagster")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["first"][1] == 0 and int(got["first"][0]) > 0  # the first tick only takes note of past loads
    (tags,) = got["tags"]  # every load since the beginning: one run
    # the test city's data: 2025-01-20 for 60 days, a day of margin either side
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == (
        "2025-01-19",
        "2025-03-22",
    )
