"""Agencies name their sources their own way, and two agencies may well give one name to two sources
(`environment/sensors` and `transport/sensors`), whose record keys may be the same (`1`, `2`, ...). A
record is one by its agency, source and key: both sources land whole, every gate passes, and the
indicators count both. (The air fact's suite once checked (source, key) only and failed such a city.)"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import string
from pathlib import Path

import duckdb

from tests.conftest import citylake
from tests.connectors_support import city_yaml


def test_two_agencies_sources_of_one_name_and_the_same_keys_are_two_sources(tmp_path: Path) -> None:
    rng = random.Random(31)
    name = rng.choice(string.ascii_lowercase) + "".join(rng.choices(string.ascii_lowercase, k=6))
    agencies = sorted({"".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8))) for _ in range(3)})
    root = tmp_path / "city"
    levels, spec = {}, {}
    for i, agency in enumerate(agencies):
        drop = root / agency
        drop.mkdir(parents=True)
        levels[agency] = round(rng.uniform(5, 60), 2)
        lines = [
            json.dumps(
                {
                    "id": str(k),  # the same keys in every agency's source
                    "station": f"st-{i}",
                    "at": f"2025-05-{1 + k % 20:02d}T{k % 24:02d}:00:00Z",
                    "pm": levels[agency],
                    "lat": 0.2 + 0.2 * i,
                    "lon": 0.5,
                }
            )
            for k in range(60)
        ]
        (drop / "readings.jsonl").write_text("\n".join(lines) + "\n")
        spec[agency] = {
            name: {
                "kind": "files",
                "path": f"./{agency}/*.jsonl",
                "format": "jsonl",
                "primary_key": ["id"],
                "feeds": "air_quality_observations",
                "columns": {
                    "station_id": "station",
                    "observed_at": "at",
                    "pm25": "pm",
                    "latitude": "lat",
                    "longitude": "lon",
                },
                "district": {"from": "coordinates", "lat": "lat", "lon": "lon"},
            }
        }
    config = city_yaml(root, spec)
    run = citylake("run", config=config, check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    gates = re.search(r"Gates: (\d+) of (\d+) passed", out)
    assert gates and gates.group(1) == gates.group(2), out
    with duckdb.connect(str(root / "state" / "warehouse.duckdb"), read_only=True) as con:
        per_agency = dict(
            con.execute(
                "select agency, count(distinct record_key) from fct_air_quality_observations group by 1"
            ).fetchall()
        )
    assert per_agency == {a: 60 for a in agencies}
    with duckdb.connect(str(root / "lake" / "catalog.duckdb"), read_only=True) as con:
        (value,) = con.execute(
            "select value from indicators where indicator_id = 'iso37120_8_1' and area_id = 'CITY' "
            "and period_grain = 'month' and period_start = ?",
            [dt.date(2025, 5, 1)],
        ).fetchone()
    # each station reads one constant level: the city's value is the mean of the stations' levels
    assert abs(value - sum(levels.values()) / len(levels)) < 1e-9, (value, levels)
