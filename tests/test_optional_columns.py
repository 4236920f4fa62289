"""A city that maps only the required columns of an entity (docs: README "Conformed entities"): its run
passes every gate and publishes. Random cities, transit ridership and energy, each optional column
(mode, route_id, stop_id; sector) mapped or not; the marts and the per-capita indicators are compared
with the same sums computed here from the generated files. Found by a verification city: a ridership
source without `mode` failed mart_mobility's not-null test and blocked publication."""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import string
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.conftest import citylake


def _name(rng: random.Random) -> str:
    return rng.choice(string.ascii_lowercase) + "".join(rng.choices(string.ascii_lowercase + "_", k=rng.randint(3, 8)))


def _square(x: float, y: float, s: float) -> list[list[float]]:
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]


@pytest.mark.parametrize(("seed", "classified"), [(4, False), (58, True)])
def test_a_city_mapping_only_required_columns_publishes(tmp_path: Path, seed: int, classified: bool) -> None:
    """`classified`: mode and sector mapped; route_id and stop_id mapped or not at random."""
    rng = random.Random(seed)
    root = tmp_path / _name(rng)
    (root / "rides").mkdir(parents=True)
    (root / "meters").mkdir()
    codes = rng.sample(["N", "S", "E", "W", "C", "X1", "77"], rng.randint(2, 4))
    features, centres = [], {}
    for i, code in enumerate(codes):
        x, y = 30.0 + 0.1 * i, 10.0
        centres[code] = (x + 0.05, y + 0.05)
        features.append(
            {
                "type": "Feature",
                "properties": {"id": code},
                "geometry": {"type": "Polygon", "coordinates": [_square(x, y, 0.1)]},
            }
        )
    (root / "areas.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    population = {c: rng.randint(1_000, 90_000) for c in codes}
    (root / "people.csv").write_text(
        "code,population,year\n" + "".join(f"{c},{p},2024\n" for c, p in population.items())
    )

    first = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randint(0, 300))
    days = [first + dt.timedelta(d) for d in range(rng.randint(20, 45))]
    ride_optional = {k: rng.random() < 0.5 for k in ("route_id", "stop_id")} | {"mode": classified}
    sector_mapped = classified
    boardings: dict[tuple, int] = defaultdict(int)  # (month, area) -> boardings
    by_day: dict[tuple, int] = defaultdict(int)  # (day, district, mode) -> boardings
    for day in days:
        rows = []
        for k in range(rng.randint(1, 6)):
            code = rng.choice(codes)
            n, mode = rng.randint(0, 900), rng.choice(["Bus", "Tram"])
            rows.append(
                {
                    "Key": f"{day}-{k}",
                    "Day": day.strftime("%m/%d/%Y"),
                    "N": n,
                    "Mode": mode,
                    "Line": "L1",
                    "Stop": f"s{k}",
                    "Lat": centres[code][1],
                    "Lon": centres[code][0],
                }
            )
            month = day.replace(day=1)
            boardings[(month, code)] += n
            boardings[(month, "CITY")] += n
            by_day[(day, code, mode.lower() if ride_optional["mode"] else "unspecified")] += n
        with open(root / "rides" / f"{day}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    kwh: dict[tuple, float] = defaultdict(float)
    meter_rows = []
    for m, code in enumerate(rng.choices(codes, k=rng.randint(2, 6))):
        month = first.replace(day=1)
        value = round(rng.uniform(10, 900), 2)
        meter_rows.append(
            {"Meter": f"m{m}", "Month": month.isoformat(), "Use": value, "Kind": "residential", "Zone": code}
        )
        kwh[(month, code)] += value
        kwh[(month, "CITY")] += value
    with open(root / "meters" / "bills.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(meter_rows[0]))
        w.writeheader()
        w.writerows(meter_rows)

    rides = {"service_date": "strptime(\"Day\", '%m/%d/%Y')", "boardings": "N", "latitude": "Lat", "longitude": "Lon"}
    rides |= {
        col: src for col, src in (("mode", "Mode"), ("route_id", "Line"), ("stop_id", "Stop")) if ride_optional[col]
    }
    meters = {"meter_id": "Meter", "period_start": "Month", "kwh": "Use"} | (
        {"sector": "Kind"} if sector_mapped else {}
    )
    agency, other = _name(rng), _name(rng)
    config = {
        "city": {
            "name": _name(rng).title(),
            "timezone": rng.choice(["Africa/Nairobi", "America/Bogota", "Asia/Kolkata"]),
        },
        "lake": {"root": "./lake"},
        "districts": {"boundaries": "./areas.geojson", "code_property": "id", "population": "./people.csv"},
        "agencies": {
            agency: {
                "rides": {
                    "kind": "files",
                    "path": "./rides/*.csv",
                    "format": "csv",
                    "primary_key": ["Key"],
                    "feeds": "transit_ridership",
                    "columns": rides,
                    "district": {"from": "coordinates", "lat": "Lat", "lon": "Lon"},
                }
            },
            other: {
                "bills": {
                    "kind": "files",
                    "path": "./meters/*.csv",
                    "format": "csv",
                    "primary_key": ["Meter", "Month"],
                    "feeds": "energy_consumption",
                    "columns": meters,
                    "district": {"from": "code", "column": "Zone"},
                }
            },
        },
    }
    path = root / "city.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = citylake("run", config=path).stdout
    assert "Gates: " in out and "FAILED" not in out, out[-3000:]

    with duckdb.connect(str(root / "lake" / "catalog.duckdb"), read_only=True) as con:
        mobility = {
            (d, c, m): b
            for d, c, m, b in con.execute(
                "select service_date, district_code, mode, boardings from mart_mobility"
            ).fetchall()
        }
        sectors = {s for (s,) in con.execute("select distinct sector from mart_energy").fetchall()}
        values = con.execute(
            "select indicator_id, period_start, area_id, value from indicators where period_grain = 'month' "
            "and indicator_id in ('iso37120_18_3', 'iso37120_7_5')"
        ).fetchall()
    assert mobility == dict(by_day)
    assert sectors == ({"residential"} if sector_mapped else {"unspecified"})
    got = {(i, p, a): v for i, p, a, v in values}
    expected = {
        ("iso37120_18_3", m, a): b / (population[a] if a != "CITY" else sum(population.values()))
        for (m, a), b in boardings.items()
    }
    expected |= {
        ("iso37120_7_5", m, a): k / (population[a] if a != "CITY" else sum(population.values()))
        for (m, a), k in kwh.items()
    }
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
