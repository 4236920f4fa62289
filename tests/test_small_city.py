"""A small city written by hand, not the reference city: its own agency and source names, a time zone
with a half-hour offset and DST, a MultiPolygon district and one with a hole, no reference data, no
partitions key. Run twice through the real `citylake run`:

1. Without reference data: the build succeeds; requests are `uncategorised`, the on-time indicator is
   absent and the indicator catalogue says why. A composite key whose values hold the key separator
   stays two records up to the indicator; a record dated tomorrow on the city's clock is held back.
2. With service categories added to city.yaml afterwards: the next run uses them (nothing to delete by
   hand), and the on-time share equals the count done here by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest
import yaml

from tests.browser import CHROMIUM, SKIP_REASON, run_chromium
from tests.conftest import citylake, unavailable

TZ = "Australia/Adelaide"


def _square(x: float, y: float, size: float) -> list[list[float]]:
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]


def write_city(root: Path) -> Path:
    features = [
        {  # two islands
            "type": "Feature",
            "properties": {"ward": "N1", "label": "North"},
            "geometry": {"type": "MultiPolygon", "coordinates": [[_square(0, 1, 1)], [[*_square(2, 1, 1)]]]},
        },
        {  # a ward with a lake in it
            "type": "Feature",
            "properties": {"ward": "S2", "label": "South"},
            "geometry": {"type": "Polygon", "coordinates": [_square(0, 0, 1), _square(0.4, 0.4, 0.2)]},
        },
    ]
    (root / "wards.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (root / "people.csv").write_text("code,population,year\nN1,1000,2024\nS2,3000,2024\n")
    drop = root / "drop"
    drop.mkdir()
    tomorrow = dt.datetime.now(ZoneInfo(TZ)).date() + dt.timedelta(days=1)
    (drop / "crashes.csv").write_text(
        "zone,seq,at,dead,hurt,ward\n"
        '"A|b",c,2025-03-03 10:00,1,0,N1\n'
        'A,"b|c",2025-03-04 11:00,1,2,N1\n'
        "Z,1,2025-03-05 12:00,0,1,S2\n"
        + "".join(f"Z,{n},2025-03-{n:02d} 08:30,0,1,S2\n" for n in range(10, 20))
        + f"F,1,{tomorrow} 23:00,1,0,S2\n"
    )
    # the same key in a second file of the same run (one load instant): the later file path is the record
    (drop / "crashes_late.csv").write_text("zone,seq,at,dead,hurt,ward\nZ,1,2025-03-05 12:00,0,7,S2\n")
    (drop / "air.jsonl").write_text(
        '{"site": "A", "at": "2025-03-03T10:00:00Z", "pm25": 8, "ward": "N1"}\n'
        '{"site": "A", "at": "2025-03-04T10:00:00Z", "pm25": 12, "ward": "N1"}\n'
    )
    (drop / "calls.csv").write_text(
        "ticket,opened,closed,kind,ward\n"
        "1,2025-03-01 09:00,2025-03-02 09:00,POTHOLE,N1\n"  # 1 day
        "2,2025-03-02 09:00,2025-03-07 09:00,POTHOLE,N1\n"  # 5 days
        "3,2025-03-03 09:00,2025-03-04 21:00,NOISE,S2\n"  # 1.5 days
        "4,2025-03-04 09:00,,NOISE,S2\n"  # open
    )
    cfg = {
        "city": {"name": "Halfhour", "timezone": TZ},
        "lake": {"root": "./lake"},
        "state_dir": "./state",
        "districts": {
            "boundaries": "./wards.geojson",
            "code_property": "ward",
            "name_property": "label",
            "population": "./people.csv",
        },
        "agencies": {
            "roads_police": {
                "crashes": {
                    "kind": "files",
                    "path": "./drop/crashes*.csv",
                    "format": "csv",
                    "primary_key": ["zone", "seq"],
                    "feeds": "road_collisions",
                    "columns": {
                        "collision_id": "zone || '/' || seq",
                        "accident_at": "at",
                        "dead_within_30_days": "dead",
                        "injured": "hurt",
                    },
                    "district": {"from": "code", "column": "ward"},
                }
            },
            "air_lab": {
                "sensors": {
                    "kind": "files",
                    "path": "./drop/air.jsonl",
                    "format": "jsonl",
                    "primary_key": ["site", "at"],
                    "feeds": "air_quality_observations",
                    "columns": {"station_id": "site", "observed_at": "at", "pm25": "pm25"},
                    "district": {"from": "code", "column": "ward"},
                }
            },
            "contact": {
                "calls": {
                    "kind": "files",
                    "path": "./drop/calls.csv",
                    "format": "csv",
                    "primary_key": ["ticket"],
                    "feeds": "service_requests",
                    "columns": {
                        "service_request_id": "ticket",
                        "requested_at": "opened",
                        "closed_at": "closed",
                        "service_code": "kind",
                    },
                    "district": {"from": "code", "column": "ward"},
                }
            },
        },
    }
    path = root / "city.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _indicators(catalog: Path) -> dict[tuple[str, str], tuple[float, float, float]]:
    with duckdb.connect(str(catalog), read_only=True) as con:
        rows = con.execute(
            """select indicator_id, area_id, value, numerator, denominator from indicators
               where period_grain = 'month' and period_start = date '2025-03-01'"""
        ).fetchall()
    return {(i, a): (v, n, d) for i, a, v, n, d in rows}


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("halfhour")
    config = write_city(root)
    citylake("run", config=config, timeout=900)
    return config


def test_a_city_without_reference_data_publishes_and_says_what_is_absent(city):
    got = _indicators(city.parent / "lake" / "catalog.duckdb")
    # deaths per 100 000: both composite-key records count (one vanished with the old key text)
    assert got[("iso37120_18_8", "N1")] == pytest.approx((200.0, 2.0, 0.01))
    assert got[("iso37120_18_8", "CITY")] == pytest.approx((50.0, 2.0, 0.04))
    # median days to close: N1 {1, 5}, S2 {1.5}, CITY {1, 1.5, 5}
    assert got[("svc_311_median_days_to_close", "N1")][0] == pytest.approx(3.0)
    assert got[("svc_311_median_days_to_close", "CITY")][0] == pytest.approx(1.5)
    assert not [k for k in got if k[0] == "svc_311_closed_within_target"]
    with duckdb.connect(str(city.parent / "lake" / "catalog.duckdb"), read_only=True) as con:
        notes = dict(con.execute("select indicator_id, note from indicator_catalog").fetchall())
        held = con.execute("select record_key, reason from quarantine where source_name = 'crashes'").fetchall()
    assert notes["svc_311_closed_within_target"].startswith("no value: no closed request has a category with a target")
    assert notes["iso37120_7_1"] == (
        "no value: no published records of energy_consumption (no source in city.yaml feeds it, "
        "or none passed its gates)"
    )
    assert notes["iso37120_18_8"] is None
    # the air source measures PM2.5 only: the other pollutants say what is missing
    assert notes["iso37120_8_1"] is None
    assert notes["iso37120_8_2"] == (
        "no value: the sources of air_quality_observations deliver nothing for Particulate matter (PM10) "
        "concentration (map its column in their columns: in city.yaml)"
    )
    with duckdb.connect(str(city.parent / "state" / "warehouse.duckdb"), read_only=True) as con:
        keys = con.execute("select record_key from fct_road_collisions order by 1").fetchall()
        tie = con.execute("select injured from fct_road_collisions where record_key = 'Z|1'").fetchall()
    assert tie == [(7,)]  # crashes_late.csv sorts after crashes.csv
    assert keys[:3] == [("A\\|b|c",), ("A|b\\|c",), ("Z|1",)] and len(keys) == 13
    tomorrow = dt.datetime.now(ZoneInfo(TZ)).date() + dt.timedelta(days=1)
    assert held == [("F|1", f"accident_at {tomorrow} is in the future")]


def test_the_report_maps_the_island_ward_and_the_ward_with_a_lake_as_one_shape_each(city):
    report = (city.parent / "lake" / "indicator_report.html").read_text(encoding="utf-8")
    section = re.search(r'<section class="indicator" id="iso37120_18_8".*?</section>', report, re.DOTALL).group(0)
    shapes = dict(re.findall(r'<path class="district" data-code="([^"]+)" d="([^"]+)"', section))
    # N1: two islands, two sub-paths; S2: its outline and its lake, drawn with the even-odd rule
    assert {code: d.count("M") for code, d in shapes.items()} == {"N1": 2, "S2": 2}
    assert section.count('fill-rule="evenodd"') == 2
    assert "<title>North: 200.00</title>" in section and "<title>South: " in section
    assert ">North</text>" in section and ">South</text>" in section  # the names from name_property
    if CHROMIUM is None:
        unavailable(SKIP_REASON)
    dom = run_chromium("--dump-dom", (city.parent / "lake" / "indicator_report.html").as_uri()).stdout
    # the browser laid out both shapes of every map (one map per indicator with district values)
    drawn = re.findall(r'<svg class="map"[^>]*data-shapes-drawn="(\d+)"', dom)
    assert drawn and set(drawn) == {"2"}, drawn


def test_reference_data_added_later_is_used_by_the_next_run(city):
    (city.parent / "categories.csv").write_text(
        "service_code,service_name,category,target_days\nPOTHOLE,Pothole,streets,2\nNOISE,Noise,nuisance,\n"
    )
    cfg = yaml.safe_load(city.read_text())
    cfg["reference_data"] = {"service_categories": "./categories.csv"}
    city.write_text(yaml.safe_dump(cfg, sort_keys=False))
    citylake("run", config=city, timeout=900)
    got = _indicators(city.parent / "lake" / "catalog.duckdb")
    # only POTHOLE has a target (2 days): N1 closed 1 of 2 within it; NOISE has none and does not count
    assert got[("svc_311_closed_within_target", "N1")] == pytest.approx((50.0, 1.0, 2.0))
    assert got[("svc_311_closed_within_target", "CITY")] == pytest.approx((50.0, 1.0, 2.0))
    assert ("svc_311_closed_within_target", "S2") not in got
    with duckdb.connect(str(city.parent / "state" / "warehouse.duckdb"), read_only=True) as con:
        cats = con.execute("select service_request_id, category from fct_service_requests order by 1").fetchall()
    assert cats == [("1", "streets"), ("2", "streets"), ("3", "nuisance"), ("4", "nuisance")]
