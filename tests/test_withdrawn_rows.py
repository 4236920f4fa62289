"""Records that leave bronze leave the published indicators at the next plain `citylake run`: a file that
became unreadable (refused: its earlier rows go) or was delivered again without rows, in a
partitioned city whose run rebuilds only the days its loads touched. New rows say which days they touch;
withdrawn ones only through the Delta log (partitions.removed_days). Random cities: days, files and the
withdrawn ones differ per seed; the indicator is recomputed here from the files that remain."""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.conftest import citylake


@pytest.mark.parametrize("seed", [2, 41])
def test_withdrawn_records_leave_the_indicators_at_the_next_run(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    root = tmp_path / "city"
    (root / "taps").mkdir(parents=True)
    square = [[[20.0, 40.0], [20.2, 40.0], [20.2, 40.2], [20.0, 40.2], [20.0, 40.0]]]
    geo = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"code": "A"}, "geometry": {"type": "Polygon", "coordinates": square}}
        ],
    }
    (root / "d.geojson").write_text(json.dumps(geo))
    (root / "p.csv").write_text("code,population,year\nA,5000,2024\n")
    start = dt.date(2026, 1, 1) + dt.timedelta(days=rng.randint(0, 200))
    days = [start + dt.timedelta(d) for d in range(rng.randint(25, 50))]
    for day in days:
        with open(root / "taps" / f"{day}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Id", "Day", "N", "Lat", "Lon"])
            for k in range(rng.randint(1, 4)):
                w.writerow([f"{day}-{k}", day.isoformat(), rng.randint(1, 500), 40.1, 20.1])
    config = {
        "city": {"name": "Withdrawn", "timezone": rng.choice(["Europe/Lisbon", "Asia/Tokyo", "America/Denver"])},
        "lake": {"root": "./lake"},
        "partitions": {"start": days[rng.randint(0, 10)].isoformat()},
        "districts": {"boundaries": "./d.geojson", "population": "./p.csv"},
        "agencies": {
            "buses": {
                "taps": {
                    "kind": "files",
                    "path": "./taps/*.csv",
                    "format": "csv",
                    "primary_key": ["Id"],
                    "feeds": "transit_ridership",
                    "columns": {"service_date": "Day", "boardings": "N", "latitude": "Lat", "longitude": "Lon"},
                    "district": {"from": "coordinates", "lat": "Lat", "lon": "Lon"},
                }
            }
        },
    }
    path = root / "city.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    citylake("run", config=path)

    # one file goes unreadable, another is delivered again empty; nothing new arrives
    refused, emptied = rng.sample(days[:-1], 2)
    (root / "taps" / f"{refused}.csv").write_bytes(b"\xff\xfe\x00 not a csv\n")
    (root / "taps" / f"{emptied}.csv").write_text("Id,Day,N,Lat,Lon\n")  # re-exported with no rows
    out = citylake("run", config=path).stdout
    assert "FAILED" not in out, out[-2000:]

    expected: dict[dt.date, int] = defaultdict(int)
    for day in days:
        if day in (refused, emptied):
            continue
        with open(root / "taps" / f"{day}.csv", newline="") as f:
            for row in csv.DictReader(f):
                expected[day.replace(day=1)] += int(row["N"])
    with duckdb.connect(str(root / "lake" / "catalog.duckdb"), read_only=True) as con:
        got = dict(
            con.execute(
                "select period_start, numerator from indicators where indicator_id = 'iso37120_18_3' "
                "and period_grain = 'month' and area_id = 'CITY'"
            ).fetchall()
        )
    assert got == {m: pytest.approx(v) for m, v in expected.items()}, (refused, emptied, got, dict(expected))


def test_removed_days_reads_the_removed_files_and_falls_back_to_every_day_without_them(tmp_path: Path) -> None:
    """partitions.removed_days: the days of the rows a load withdrew (not of the rows a rewrite copied
    unchanged); when the earlier version cannot be read (vacuumed, its log cleaned up), every day the
    table covers."""
    from orchestration import lake
    from orchestration.config import load_config
    from orchestration.ingest import ingest
    from orchestration.partitions import data_days, removed_days
    from tests.connectors_support import city_yaml

    root = tmp_path / "city"
    (root / "drop").mkdir(parents=True)
    for day in range(1, 21):
        (root / "drop" / f"d{day:02d}.csv").write_text(f"id,day,n\n{day},2026-03-{day:02d},{day}\n")
    spec = {
        "kind": "files",
        "path": "./drop/*.csv",
        "format": "csv",
        "primary_key": ["id"],
        "feeds": "transit_ridership",
        "columns": {"service_date": "day", "boardings": "n"},
    }
    cfg = load_config(city_yaml(root, {"buses": {"taps": {**spec, "district": {"from": "code", "column": "id"}}}}))
    source = cfg.source("buses/taps")
    ingest(cfg, source, "run-1")
    before = lake.open_table(lake.bronze_uri(cfg, "buses", "taps")).version()
    (root / "drop" / "d07.csv").write_bytes(b"\xff\xfe\x00gone\n")  # refused: its row leaves bronze
    ingest(cfg, source, "run-2")
    assert removed_days(cfg, {source.key: [before, 0]}) == (dt.date(2026, 3, 6), dt.date(2026, 3, 8))
    assert removed_days(cfg, {source.key: [before + 1, 0]}) is None
    # a version that is not there: every day the table covers, with data_days' one day of margin either side
    assert removed_days(cfg, {source.key: [before + 50, 0]}) == data_days(cfg) == (
        dt.date(2026, 2, 28),
        dt.date(2026, 3, 21),
    )
