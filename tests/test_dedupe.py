"""Duplicates across sources: a second feed of road collisions overlapping the first, counted once by
`deduplicate:` in city.yaml (and counted twice without it, which is why the rule is opt-in per entity).

The small reference city runs twice through the real `citylake run`: first with the police feed and no
rule, then with the rule added (bronze already loaded; the models are rebuilt and republished).
"""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml

from tests.conftest import TEST_CITY, CityRun, citylake, write_city_config

RULE = {"road_collisions": {"match": ["accident_at", "latitude", "longitude"], "prefer": ["police/incidents"]}}
REASON = "(deduplicate.road_collisions in city.yaml)"


def police_feed(city_dir: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """The police's own export of the safety agency's collisions: other ids, UTC times, other column names.

    It holds every fatal collision and every third other one (the overlap) plus five of its own:
    each at the time of one collision and the place of another of the same month, so it matches
    none (every `match` column must be equal), with no deaths so the indicator is unchanged.
    Returns the feed and, for each overlapping police id, the safety collision_id it copies."""
    with open(city_dir / "bad_records.csv", newline="") as f:
        bad = {r["record_key"] for r in csv.DictReader(f) if r["source"] == "safety/collisions"}
    with sqlite3.connect(city_dir / "safety.sqlite") as con:
        safety = pd.read_sql("select * from collisions order by collision_id", con)
    clean = safety[~safety["collision_id"].isin(bad)].drop_duplicates("collision_id").reset_index(drop=True)
    utc = (
        pd.to_datetime(clean["crash_local_time"])
        .dt.tz_localize("America/Chicago")
        .dt.tz_convert("UTC")
        .dt.strftime("%Y-%m-%dT%H:%M:00Z")
    )
    overlap = clean[(clean["killed"] > 0) | (clean.index % 3 == 0)]
    copies = pd.DataFrame(
        {
            "incident_no": [f"P-{i:04d}" for i in range(len(overlap))],
            "occurred_utc": utc[overlap.index].to_numpy(),
            "lat": overlap["latitude"].to_numpy(),
            "lon": overlap["longitude"].to_numpy(),
            "fatalities": overlap["killed"].to_numpy(),
            "injuries": overlap["injured"].to_numpy(),
        }
    )
    month = clean["crash_local_time"].str[:7]
    own = []
    for n, (_, group) in enumerate(clean.groupby(month)):
        for k in range(min(2, len(group) // 2)):
            when, where = group.iloc[k], group.iloc[-1 - k]
            own.append(
                {
                    "incident_no": f"P-9{len(own):03d}",
                    "occurred_utc": utc[when.name],
                    "lat": where["latitude"],
                    "lon": where["longitude"],
                    "fatalities": 0,
                    "injuries": 1 + n,
                }
            )
    own = own[:5]
    assert len(own) == 5 and overlap["killed"].sum() > 0
    return pd.concat([copies, pd.DataFrame(own)], ignore_index=True), dict(
        zip(copies["incident_no"], overlap["collision_id"], strict=True)
    )


POLICE = {
    "kind": "files",
    "path": "./riverton/landing/police/*.csv",
    "format": "csv",
    "primary_key": ["incident_no"],
    "timezone": "UTC",
    "feeds": "road_collisions",
    "columns": {
        "collision_id": "incident_no",
        "accident_at": "occurred_utc",
        "dead_within_30_days": "fatalities",
        "injured": "injuries",
        "latitude": "lat",
        "longitude": "lon",
    },
    "district": {"from": "coordinates", "lat": "lat", "lon": "lon"},
}


def query(db: Path, sql: str) -> pd.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.sql(sql).df()
    finally:
        con.close()


def deaths_indicator(run: CityRun) -> pd.DataFrame:
    return query(
        run.catalog,
        "select area_id, period_grain, cast(period_start as varchar) as period_start, value, numerator, coverage "
        "from indicators where indicator_id = 'iso37120_18_8' order by all",
    )


@pytest.fixture(scope="module")
def two_feeds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Riverton plus the police feed: run without the rule, then with it."""
    from orchestration.reference_city import generate

    root = tmp_path_factory.mktemp("dedupe")
    city_dir = root / "riverton"
    generate(city_dir, **TEST_CITY)
    feed, copies = police_feed(city_dir)
    (city_dir / "landing" / "police").mkdir(parents=True)
    feed.to_csv(city_dir / "landing" / "police" / "incidents.csv", index=False)
    config = write_city_config(root, city_dir, root / "lake", partitioned=False)
    cfg = yaml.safe_load(config.read_text())
    cfg["agencies"]["police"] = {"incidents": POLICE}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run = CityRun(root, config, city_dir, root / "lake", root / "state")

    citylake("run", config=config)
    without = {
        "collisions": query(run.warehouse, "select source_name, record_key from fct_road_collisions"),
        "deaths": deaths_indicator(run),
        "quarantine": query(run.catalog, "select * from quarantine where source_name in ('collisions', 'incidents')"),
    }

    cfg["deduplicate"] = RULE
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    citylake("run", config=config)
    return {"run": run, "feed": feed, "copies": copies, "without": without}


def test_without_a_rule_both_feeds_count(two_feeds: dict) -> None:
    """No `deduplicate:` rule: every police copy is a second fact, and the deaths indicator counts them twice."""
    run, feed, copies = two_feeds["run"], two_feeds["feed"], two_feeds["copies"]
    facts = two_feeds["without"]["collisions"]
    truth = pd.read_csv(run.city_dir / "ground_truth.csv", dtype={"period_start": str})
    city_year = truth[(truth["indicator_id"] == "iso37120_18_8") & (truth["area_id"] == "CITY")]
    city_year = city_year[city_year["period_grain"] == "year"]
    assert (facts["source_name"] == "incidents").sum() == len(feed)
    assert set(copies.values()) <= set(facts.loc[facts["source_name"] == "collisions", "record_key"])
    got = two_feeds["without"]["deaths"]
    got_city = got[(got["area_id"] == "CITY") & (got["period_grain"] == "year")]
    # every fatal collision is in both feeds: the deaths are counted exactly twice
    assert got_city["numerator"].tolist() == [2 * city_year["numerator"].iloc[0]]


def test_each_overlapping_collision_is_one_fact_from_the_preferred_source(two_feeds: dict) -> None:
    run, feed, copies = two_feeds["run"], two_feeds["feed"], two_feeds["copies"]
    facts = query(run.warehouse, "select source_name, record_key, collision_id from fct_road_collisions")
    police = set(facts.loc[facts["source_name"] == "incidents", "record_key"])
    safety = set(facts.loc[facts["source_name"] == "collisions", "record_key"])
    # the preferred source's copy is kept, the safety agency's record of the same collision is not
    assert set(copies) <= police and not set(copies.values()) & safety
    # the police's own collisions (each shares its time with one collision and its place with another) stay
    own = set(feed["incident_no"]) - set(copies)
    assert len(own) == 5 and own <= police
    # and nothing else moved: one fact per real collision
    assert len(facts) == len(two_feeds["without"]["collisions"]) - len(copies)
    assert facts[["source_name", "record_key"]].duplicated().sum() == 0


def test_the_dropped_copies_are_in_quarantine_naming_the_kept_record(two_feeds: dict) -> None:
    run, copies = two_feeds["run"], two_feeds["copies"]
    held = query(
        run.catalog,
        "select layer, entity, source_name, record_key, reason from quarantine where reason like 'duplicate of %'",
    )
    expected = {
        ("conformed", "road_collisions", "collisions", collision, f"duplicate of police/incidents {incident} {REASON}")
        for incident, collision in copies.items()
    }
    assert set(held.itertuples(index=False, name=None)) == expected
    # the other held-back collisions (the generator's bad records) are as they were without the rule
    before = two_feeds["without"]["quarantine"]
    after = query(run.catalog, "select * from quarantine where source_name in ('collisions', 'incidents')")
    assert len(after) == len(before) + len(copies)
    # one summary line for the rule, not one per record
    summary = query(run.catalog, "select reason, records from quarantine_summary where reason like 'duplicate of %'")
    assert summary.values.tolist() == [[f"duplicate of police/incidents <key> {REASON}", len(copies)]]
    # the duplicates do not count against the intermediate quality gate (reject_reason stays null)
    marked = query(
        run.warehouse,
        "select count(*) filter (where reject_reason is null) as unrejected, count(*) as n "
        "from int_road_collisions__districted where duplicate_of is not null",
    )
    assert marked.values.tolist() == [[len(copies), len(copies)]]


def test_deaths_indicator_equals_the_ground_truth_with_the_rule(two_feeds: dict) -> None:
    run = two_feeds["run"]
    truth = pd.read_csv(run.city_dir / "ground_truth.csv", dtype={"area_id": str, "period_start": str})
    truth = truth[truth["indicator_id"] == "iso37120_18_8"]
    got = deaths_indicator(run)
    merged = truth.merge(got, on=["area_id", "period_grain", "period_start"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all() and len(merged) > 10
    for m in ("value", "numerator", "coverage"):
        assert ((merged[f"{m}_x"] - merged[f"{m}_y"]).abs() <= 1e-9).all(), merged[[f"{m}_x", f"{m}_y"]]


def test_rule_semantics_on_the_generated_sql() -> None:
    """The generated SQL run on small rows: preference order, unlisted sources, nulls and rejects.

    Edge cases the run above does not reach; the SQL is the one render_union writes into the model."""
    from orchestration.config import Deduplicate
    from orchestration.dbt_build import render_deduplicate

    rows = [
        # agency, source, key, ingested hour, accident_at, latitude, longitude, reject_reason
        ("safety", "collisions", "C1", 1, "t1", 1.0, 1.0, None),  # group t1: police preferred, then safety
        ("police", "incidents", "P1", 2, "t1", 1.0, 1.0, None),
        ("police", "incidents", "P2", 1, "t1", 1.0, 1.0, None),  # the kept source's own second record stays
        ("fire", "calls", "F1", 9, "t1", 1.0, 1.0, None),  # unlisted: after the listed ones, however recent
        ("safety", "collisions", "C2", 1, "t2", 1.0, 1.0, None),
        ("fire", "calls", "F2", 9, "t2", 1.0, 1.0, None),
        ("fire", "calls", "F3", 1, "t3", 1.0, 1.0, None),  # two unlisted sources: the latest ingested kept
        ("ems", "runs", "E3", 2, "t3", 1.0, 1.0, None),
        ("safety", "collisions", "C4", 1, "t4", None, 1.0, None),  # a null match value never matches
        ("police", "incidents", "P4", 1, "t4", None, 1.0, None),
        ("safety", "collisions", "C5", 1, "t5", 1.0, 1.0, "injured out of range"),  # a reject never matches
        ("police", "incidents", "P5", 1, "t5", 1.0, 1.0, None),
        ("safety", "collisions", "C6", 1, "t6", 1.0, 1.0, None),  # equal time, other place: two records
        ("police", "incidents", "P6", 1, "t6", 1.5, 1.0, None),
    ]
    values = ",\n".join(
        f"('{a}', '{s}', '{k}', timestamptz '2025-01-01 00:00+00' + interval {h} hour, '{t}', "
        f"{'null' if lat is None else lat}, {lon}, {'null' if r is None else repr(r)})"
        for a, s, k, h, t, lat, lon, r in rows
    )
    union = (
        f"select * from (values {values}) as t(agency, source_name, record_key, ingested_at, accident_at, "
        "latitude, longitude, reject_reason)"
    )
    match = ("accident_at", "latitude", "longitude")
    rule = Deduplicate("road_collisions", match, ("police/incidents", "safety/collisions"))
    got = dict(duckdb.sql(f"select record_key, duplicate_of from ({render_deduplicate(union, rule)})").fetchall())
    assert got == {
        "C1": "police/incidents P1",
        "P1": None,
        "P2": None,
        "F1": "police/incidents P1",
        "C2": None,
        "F2": "safety/collisions C2",
        "F3": "ems/runs E3",
        "E3": None,
        "C4": None,
        "P4": None,
        "C5": None,
        "P5": None,
        "C6": None,
        "P6": None,
    }
    # no rule: the same rows, nothing marked
    plain = duckdb.sql(f"select count(duplicate_of), count(*) from ({render_deduplicate(union, None)})").fetchall()
    assert plain == [(0, len(rows))]
