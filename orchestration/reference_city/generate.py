"""Generate Riverton, the reference city: every agency silo in its native form, plus known bad records.

Everything is derived from one numpy Generator seeded by the caller, so the same arguments always yield
byte-identical files. `build` returns the city in memory (clean records, bad records, reference tables);
`write` lays it out on disk; `generate` does both and adds the ground truth. `scale` multiplies the people
and the records together; each record's amount is sized from the residents it serves, so the per-capita
indicators are a real city's at every scale (docs/indicators.md, "Plausible values").
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sqlite3
import zipfile
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd

TIMEZONE = "America/Chicago"

DISTRICTS: list[tuple[str, str]] = [
    ("D01", "Northgate"),
    ("D02", "Riverside"),
    ("D03", "Old Town"),
    ("D04", "Eastfield"),
    ("D05", "Southbank"),
    ("D06", "Westmoor"),
    ("D07", "Hillcrest"),
    ("D08", "Lakeview"),
]
CODES = np.array([c for c, _ in DISTRICTS])
NAMES = np.array([n for _, n in DISTRICTS])

# The districts form a 4 (west->east) x 2 grid of rectangles covering the city's bounding box,
# D01-D04 in the north row.
_LON_EDGES = [-90.40, -90.30, -90.20, -90.10, -90.00]
_LAT_EDGES = [38.50, 38.65, 38.80]

# The 311 system's requester-entered misspellings (at least one per district).
TYPOS: dict[str, list[str]] = {
    "D01": ["Nortgate", "North Gate"],
    "D02": ["Riverside Dist.", "Riversdie"],
    "D03": ["Old-Town", "Oldtown"],
    "D04": ["E. Field", "Eastfeild"],
    "D05": ["South Bank", "Southbnk"],
    "D06": ["West Moor", "Westmore"],
    "D07": ["Hill Crest", "Hilcrest"],
    "D08": ["Lake View", "Lakeveiw"],
}
# Requesters of 311 requests (fake, but shaped like the real thing): the API serves their names, email,
# phone and the exact address, as Open311 back ends do; citylake must keep them out of the lake.
FIRST_NAMES = (
    "Maribel Tobias Ingrid Desmond Priyanka Rafaela Yukiko Colette Anselm Fatima Oskar Leonora Dashiell Marisol "
    "Thaddeus Ottilie Cormac Zainab Evander Lucinda"
).split()
LAST_NAMES = (
    "Okonkwo Lindqvist Nakashima Castellanos Whitcombe Abernathy Kowalczyk Haddadin Oyelaran Ferreira-Lund "
    "Delacroix Brannigan Achterberg Szabolcs Quistgaard Ramanathan"
).split()
STREETS = (
    "Quillfeather Lane, Juniper Hollow Road, Marlowe Crescent, Tamarack Bend, Old Ferry Landing, "
    "Copperbeech Avenue, Wrenfield Court, Saltmarsh Drive, Larkspur Terrace, Ironbridge Way"
).split(", ")
# The transport agency's own zone codes, in district order.
ZONES = np.array([f"TZ-{'N' if i < 4 else 'S'}{i % 4 + 1}" for i in range(8)])

# service_code -> (service_name, category, target_days, agency, share of requests)
SERVICES: dict[str, tuple[str, str, int, str, float]] = {
    "POTHOLE": ("Pothole repair", "streets", 5, "Public Works", 0.25),
    "STREETLIGHT": ("Streetlight outage", "streets", 7, "Public Works", 0.15),
    "GRAFFITI": ("Graffiti removal", "public_space", 10, "Parks and Public Space", 0.12),
    "MISSED_PICKUP": ("Missed waste pickup", "sanitation", 2, "Sanitation", 0.20),
    "NOISE": ("Noise complaint", "public_order", 1, "Police", 0.18),
    "TREE": ("Tree maintenance", "parks", 14, "Parks and Public Space", 0.10),
}
WASTE_STREAMS = {"Refuse": "refuse", "Recycling": "recycling", "Organics": "organics", "Bulk": "other"}

# What Riverton's residents use, per resident: each record's amount is sized from the residents it serves
# (a stop area's share of its district, a residential feeder's share of its district, a large account's
# share of the city, a collection round's share of its district). The sources keep their own units: kWh,
# tonnes, boardings.
BOARDINGS_PER_RESIDENT_WEEKDAY = 0.6  # weekends 0.6 x that: ~15 trips per resident per month, a city with a metro
# kWh per resident per month, before the seasonal swing (January +25 %, July -25 %): ~380 in all in February
KWH_PER_RESIDENT_MONTH = {"residential": 125.0, "commercial": 105.0, "industrial": 40.0, "public": 15.0}
# kg per resident per week on a collection round that collects the stream (every round collects refuse;
# 80 % recycling, 50 % organics, 30 % bulk): ~10 kg a week, ~21 % of it recycling
WASTE_KG_PER_RESIDENT_WEEK = {"Refuse": 7.0, "Recycling": 2.6, "Organics": 1.6, "Bulk": 0.8}

# Bad-record source names, as the pipeline's quarantine reports them.
SOURCES = {
    "ridership": "transport/ridership",
    "collisions": "safety/collisions",
    "requests": "service_requests/requests",
    "energy": "energy/meter_readings",
    "waste": "waste/collections",
    "air_a": "environment/air_vendor_a",
    "air_b": "environment/air_vendor_b",
}
# Columns forming each source's record_key, joined with "|".
KEYS = {
    "ridership": ["stop_id", "service_date"],
    "collisions": ["collision_id"],
    "requests": ["service_request_id"],
    "energy": ["meter_id", "month"],
    "waste": ["route_id", "stream", "week_start"],
    "air_a": ["sensor", "ts"],
    "air_b": ["station_id", "observed_at"],
}
# Paths (relative to out_dir) that a generation owns and replaces.
OWNED = [
    "districts.geojson",
    "population.csv",
    "district_crosswalk.csv",
    "transport.sqlite",
    "safety.sqlite",
    "open311",
    "service_categories.csv",
    "waste_streams.csv",
    "landing/energy",
    "landing/waste",
    "landing/air",
    "bad_records.csv",
    "ground_truth.csv",
    "generation.json",
]


@dataclass
class City:
    """The generated city in memory.

    `clean` holds every good record once, in the source's native columns (dates as strings, as written);
    `bad` holds the deliberately bad records in the same columns plus `kind` and `detail`;
    `reference` holds population, crosswalk, service_categories, waste_streams and stops.
    """

    start: date
    days: int
    scale: float
    seed: int
    reference: dict[str, pd.DataFrame]
    clean: dict[str, pd.DataFrame]
    bad: dict[str, pd.DataFrame]


def district_bounds() -> dict[str, tuple[float, float, float, float]]:
    """Return {code: (west, south, east, north)}; shared edges are exactly equal floats."""
    bounds = {}
    for i, code in enumerate(CODES):
        col, north_row = i % 4, i < 4
        south, north = (_LAT_EDGES[1], _LAT_EDGES[2]) if north_row else (_LAT_EDGES[0], _LAT_EDGES[1])
        bounds[str(code)] = (_LON_EDGES[col], south, _LON_EDGES[col + 1], north)
    return bounds


def districts_geojson() -> dict:
    """Return the districts as a GeoJSON FeatureCollection of rectangles."""
    names = dict(DISTRICTS)
    features = []
    for code, (w, s, e, n) in district_bounds().items():
        ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
        features.append(
            {
                "type": "Feature",
                "properties": {"code": code, "name": names[code]},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    return {"type": "FeatureCollection", "features": features}


# ---------------------------------------------------------------------------------------------- helpers


def _n_bad(scale: float) -> int:
    """Bad records per kind per source: a few, growing mildly with scale."""
    return max(2, round(3 * scale**0.5))


def _count(base: float, scale: float, minimum: int = 8) -> int:
    return max(minimum, round(base * scale))


def _residents(population: pd.DataFrame) -> np.ndarray:
    """The latest census count of each district, in CODES order: whom the records serve."""
    latest = population[population["year"] == population["year"].max()].set_index("code")["population"]
    return latest.loc[CODES].to_numpy(float)


def _served(residents: np.ndarray, district: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Residents each record serves: its district's people shared equally among the records of that district
    (and group, e.g. sector). A record with no district (-1) serves the whole city's share of its group."""
    group = np.zeros(len(district), int) if group is None else group
    out = np.empty(len(district))
    for g in np.unique(group):
        in_group = group == g
        for d in np.unique(district[in_group]):
            mine = in_group & (district == d)
            people = residents.sum() if d < 0 else residents[d]
            out[mine] = people / (in_group.sum() if d < 0 else mine.sum())
    return out


def _points(rng: np.random.Generator, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Random (lat, lon) strictly inside each given district index, away from edges so ownership is clear."""
    b = np.array([district_bounds()[str(c)] for c in CODES])[idx]
    margin = 0.001
    lon = b[:, 0] + margin + rng.random(len(idx)) * (b[:, 2] - b[:, 0] - 2 * margin)
    lat = b[:, 1] + margin + rng.random(len(idx)) * (b[:, 3] - b[:, 1] - 2 * margin)
    return lat.round(6), lon.round(6)


def _local_midnight_utc(d: date) -> pd.Timestamp:
    return pd.Timestamp(d).tz_localize(TIMEZONE).tz_convert("UTC")


def _iso_local(ts: pd.Series) -> pd.Series:
    """UTC timestamps -> ISO 8601 local strings with a colon offset, e.g. 2025-01-03T08:15:00-06:00."""
    s = ts.dt.tz_convert(TIMEZONE).dt.strftime("%Y-%m-%dT%H:%M:%S%z")
    return s.str[:-2] + ":" + s.str[-2:]


def _split(rng: np.random.Generator, df: pd.DataFrame, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Remove n random rows from df; return (rest, removed): removed rows become bad records with own keys."""
    n = min(n, len(df) // 5)  # tiny generations keep most of their good records
    pick = np.zeros(len(df), bool)
    pick[rng.choice(len(df), n, replace=False)] = True
    return df[~pick].reset_index(drop=True), df[pick].reset_index(drop=True)


def _bad(rows: pd.DataFrame, kind: str, detail: str, **changes: object) -> pd.DataFrame:
    rows = rows.copy()
    for col, value in changes.items():
        rows[col] = [value] * len(rows)
    return rows.assign(kind=kind, detail=detail)


def _corrupt(rng: np.random.Generator, clean: pd.DataFrame, n: int, specs: list[tuple]) -> tuple:
    """Apply each (kind, detail, changes) spec to n rows taken out of clean; return (clean, bad)."""
    bad = []
    for kind, detail, changes in specs:
        clean, rows = _split(rng, clean, n)
        bad.append(_bad(rows, kind, detail, **changes))
    return clean, bad


def _duplicates(rng: np.random.Generator, clean: pd.DataFrame, n: int) -> pd.DataFrame:
    rows = clean.iloc[np.sort(rng.choice(len(clean), min(n, len(clean) // 5), replace=False))]
    return rows.reset_index(drop=True).assign(kind="duplicate", detail="exact copy of a good record")


# ---------------------------------------------------------------------------------------------- sources


def _population(rng: np.random.Generator, scale: float) -> pd.DataFrame:
    p2020 = np.round(rng.integers(40_000, 120_001, 8) * scale).astype(np.int64)
    p2025 = np.round(p2020 * (1 + rng.normal(0.02, 0.02, 8))).astype(np.int64)
    return pd.DataFrame(
        {
            "code": np.tile(CODES, 2),
            "population": np.concatenate([p2020, p2025]),
            "year": [2020] * 8 + [2025] * 8,
        }
    )


def _crosswalk() -> pd.DataFrame:
    rows = []
    for i, (code, name) in enumerate(DISTRICTS):
        rows += [(name, code), (code, code), *((t, code) for t in TYPOS[code]), (str(ZONES[i]), code)]
    return pd.DataFrame(rows, columns=["alias", "district_code"])


def _transport(
    rng: np.random.Generator, scale: float, start: date, days: int, n_bad: int, residents: np.ndarray
) -> tuple:
    n = _count(60, scale)
    dist = rng.permutation(np.arange(n) % 8)
    rail = rng.random(n) < 0.2
    lat, lon = _points(rng, dist)
    route = np.where(rail, [f"R{i}" for i in rng.integers(1, 4, n)], [f"B{i:02d}" for i in rng.integers(1, 25, n)])
    stops = pd.DataFrame(
        {
            "stop_id": [f"S{i + 1:04d}" for i in range(n)],
            "stop_name": [
                f"{NAMES[d]} {'Station' if r else 'Stop'} {i + 1}"
                for i, (d, r) in enumerate(zip(dist, rail, strict=False))
            ],
            "zone_code": ZONES[dist],
            "lat": lat,
            "lon": lon,
        }
    )
    dates = pd.date_range(start, periods=days, freq="D")
    # A stop_id is a stop area (rail: a station): its district's weekday trips, shared by weight; some
    # districts ride more than others.
    weight = rng.lognormal(np.log(150), 0.6, n) * np.where(rail, 4, 1)
    share = weight / np.bincount(dist, weights=weight, minlength=8)[dist]
    habit = rng.lognormal(0, 0.25, 8)
    base = BOARDINGS_PER_RESIDENT_WEEKDAY * habit[dist] * residents[dist] * share
    weekday = np.where(dates.day_of_week < 5, 1.0, 0.6)
    boardings = rng.poisson(base[:, None] * weekday[None, :])
    s, d = np.nonzero(rng.random((n, days)) >= 0.02)  # ~2% of stop-days simply missing
    updated = dates[d] + pd.Timedelta(days=1, hours=2) + pd.to_timedelta(rng.integers(0, 7200, len(d)), unit="s")
    rides = pd.DataFrame(
        {
            "stop_id": stops["stop_id"].to_numpy()[s],
            "service_date": dates[d].strftime("%Y-%m-%d"),
            "mode": np.where(rail, "rail", "bus")[s],
            "route_id": route[s],
            "boardings": boardings[s, d].astype(np.int64),
            "updated_at": updated.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    rides, bad = _corrupt(rng, rides, n_bad, [("out_of_range", "negative boardings", {"boardings": -17})])
    bad.append(_duplicates(rng, rides, n_bad))
    # A stop in a zone the crosswalk does not know: its rows cannot be placed in any district.
    ghost = "S9001"
    stops.loc[len(stops)] = [ghost, "Depot Shuttle Stop", "TZ-XX", 38.6, -90.2]
    k = min(n_bad, days, len(rides))
    ghost_rows = rides.iloc[:k].assign(stop_id=ghost, service_date=dates[:k].strftime("%Y-%m-%d").to_numpy())
    bad.append(ghost_rows.assign(kind="unknown_district", detail="stop zone_code TZ-XX is not in the crosswalk"))
    return stops, rides, pd.concat(bad, ignore_index=True)


def _collisions(rng: np.random.Generator, scale: float, start: date, days: int, n_bad: int) -> tuple:
    per_day = rng.poisson(8 * scale, days)
    day = np.repeat(np.arange(days), per_day)
    edges = [_local_midnight_utc(start + timedelta(days=int(i))) for i in range(days + 1)]
    lo = np.array([e.value for e in edges[:-1]])[day]
    span = np.diff([e.value for e in edges])[day]
    # Draw UTC instants inside each local day so local wall times always exist (DST-safe).
    ns = lo + (rng.random(len(day)) * span).astype(np.int64)
    utc = pd.to_datetime(ns, utc=True).floor("min")
    lat, lon = _points(rng, rng.integers(0, 8, len(day)))
    df = pd.DataFrame(
        {
            "collision_id": [f"C{i + 1:06d}" for i in range(len(day))],
            "crash_local_time": utc.tz_convert(TIMEZONE).strftime("%Y-%m-%d %H:%M"),
            "killed": rng.poisson(0.03, len(day)).astype(np.int64),
            "injured": rng.poisson(0.7, len(day)).astype(np.int64),
            "latitude": lat,
            "longitude": lon,
        }
    )
    df, bad = _corrupt(
        rng,
        df,
        n_bad,
        [
            ("out_of_range", "negative injured", {"injured": -2}),
            (
                "outside_city",
                "coordinates outside the city bounding box",
                {"latitude": _LAT_EDGES[-1] + 0.45, "longitude": _LON_EDGES[0] - 0.7},
            ),
        ],
    )
    return df, pd.concat(bad, ignore_index=True)


def _district_text(rng: np.random.Generator, dist: np.ndarray) -> list[str | None]:
    """The requester-entered district: mostly canonical, sometimes re-cased, padded or misspelt, ~3% blank."""
    kind = rng.choice(5, len(dist), p=[0.70, 0.08, 0.07, 0.12, 0.03])
    pick = rng.integers(0, 2, len(dist))
    out: list[str | None] = []
    for d, k, p in zip(dist, kind, pick, strict=False):
        name = str(NAMES[d])
        if k == 1:
            name = name.upper() if p else name.lower()
        elif k == 2:
            name = "  " + name.replace(" ", "   ") + " " if " " in name else f" {name}  "
        elif k == 3:
            name = TYPOS[str(CODES[d])][p]
        out.append(None if k == 4 else name)
    return out


def _requesters(people: np.random.Generator, n: int) -> dict[str, list[str | None]]:
    """Who reported each request (first_name, last_name, email, phone) and the exact address, from a
    generator of their own so that every other file of the city stays as it was. About a quarter of
    requests are anonymous; some requesters give no email or no phone. Emails use example.org (a
    reserved domain) and phones the 555-01xx block set aside for fiction."""
    first = people.choice(FIRST_NAMES, n)
    last = people.choice(LAST_NAMES, n)
    number = people.integers(100, 9900, n)
    street = people.choice(STREETS, n)
    anonymous = people.random(n) < 0.25
    no_email = people.random(n) < 0.2
    no_phone = people.random(n) < 0.3
    no_address = people.random(n) < 0.1
    line = people.integers(100, 200, n)
    tag = people.integers(1, 100, n)
    out: dict[str, list[str | None]] = {"address": [], "first_name": [], "last_name": [], "email": [], "phone": []}
    for i in range(n):
        out["address"].append(None if no_address[i] else f"{number[i]} {street[i]}, Riverton")
        named = not anonymous[i]
        out["first_name"].append(str(first[i]) if named else None)
        out["last_name"].append(str(last[i]) if named else None)
        email = f"{first[i].lower()}.{last[i].lower()}{tag[i]}@example.org"
        out["email"].append(email if named and not no_email[i] else None)
        out["phone"].append(f"+1-314-555-0{line[i]}" if named and not no_phone[i] else None)
    return out


def _requests(
    rng: np.random.Generator, scale: float, start: date, days: int, n_bad: int, people: np.random.Generator
) -> tuple:
    lo, hi = _local_midnight_utc(start), _local_midnight_utc(start + timedelta(days=days))
    n = int(rng.poisson(40 * scale * days))
    requested = pd.Series(pd.to_datetime(np.sort(rng.integers(lo.value, hi.value, n)), utc=True)).dt.floor("min")
    codes = np.array(list(SERVICES))
    code = rng.choice(codes, n, p=[v[4] for v in SERVICES.values()])
    target = np.array([SERVICES[c][2] for c in code], dtype=float)
    # Lognormal-ish durations centred below target, a fat tail past it; minutes only.
    minutes = np.maximum(10, np.round(target * rng.lognormal(np.log(0.6), 0.9, n) * 1440)).astype(np.int64)
    closed = requested + pd.to_timedelta(minutes, unit="min")
    is_open = (rng.random(n) < 0.08) | (closed >= hi).to_numpy()
    until = np.minimum((hi - requested).dt.total_seconds().to_numpy() // 60 - 1, 2 * 1440)
    touched = requested + pd.to_timedelta((rng.random(n) * until).astype(np.int64), unit="min")
    updated = touched.where(is_open, closed)
    dist = rng.integers(0, 8, n)
    lat, lon = _points(rng, dist)
    no_point = rng.random(n) < 0.1
    closed_s = _iso_local(closed).where(~is_open, None)
    df = pd.DataFrame(
        {
            "service_request_id": [str(100001 + i) for i in range(n)],
            "status": np.where(is_open, "open", "closed"),
            "service_code": code,
            "service_name": [SERVICES[c][0] for c in code],
            "agency_responsible": [SERVICES[c][3] for c in code],
            "description": [f"{SERVICES[c][0]} reported by resident" for c in code],
            "requested_datetime": _iso_local(requested),
            "updated_datetime": _iso_local(updated),
            "closed_datetime": closed_s.astype(object),
            "district": _district_text(rng, dist),
            "lat": pd.Series(lat).where(~no_point),
            "long": pd.Series(lon).where(~no_point),
            **_requesters(people, n),
        }
    )
    df, bad = _corrupt(
        rng,
        df,
        n_bad,
        [
            ("unknown_district", "district 'Atlantis' is not in the crosswalk", {"district": "Atlantis"}),
            ("missing_required", "requested_datetime is null", {"requested_datetime": None}),
        ],
    )
    bad.append(_duplicates(rng, df, n_bad))
    return df, pd.concat(bad, ignore_index=True)


def _months(start: date, days: int) -> list[str]:
    end = start + timedelta(days=days)
    firsts = pd.date_range(start.replace(day=1), end, freq="MS")
    return [m.strftime("%Y-%m") for m in firsts if start <= m.date() < end]


def _energy(rng: np.random.Generator, scale: float, start: date, days: int, n_bad: int, residents: np.ndarray) -> tuple:
    n = _count(300, scale)
    sectors = np.array(["residential", "commercial", "industrial", "public"])
    sector = rng.choice(sectors, n, p=[0.70, 0.20, 0.05, 0.05])
    noise = rng.lognormal(0, 0.3, n)
    d_idx = rng.integers(0, 8, n)
    home = sector == "residential"
    d_idx[home] = rng.permutation(np.arange(home.sum()) % 8)  # every district has its feeders
    no_district = rng.random(n) < 0.02
    no_district[rng.integers(0, n)] = True  # at least one meter is citywide-only
    district = CODES[d_idx].astype(object)
    district[no_district] = ""
    # A meter_id is a residential feeder, sized by its district's residents, or a large account (offices,
    # plants, public buildings), sized by the whole city's: businesses cluster in some districts.
    rate = np.array([KWH_PER_RESIDENT_MONTH[str(s)] for s in sector])
    group = np.unique(sector, return_inverse=True)[1]
    base = rate * _served(residents, np.where(home & ~no_district, d_idx, -1), group) * noise
    months = _months(start, days)
    season = np.array([1 + 0.25 * np.cos(2 * np.pi * (int(m[5:]) - 1) / 12) for m in months])
    kwh = (base[:, None] * season[None, :] * rng.lognormal(0, 0.08, (n, len(months)))).round(1)
    s, m = np.nonzero(rng.random((n, len(months))) >= 0.01)
    df = pd.DataFrame(
        {
            "meter_id": [f"M{i + 1:05d}" for i in s],
            "month": np.array(months, dtype=str)[m],
            "kwh": kwh[s, m],
            "sector": sector[s],
            "district_code": district[s],
        }
    )
    df, bad = _corrupt(
        rng,
        df,
        n_bad,
        [
            ("out_of_range", "negative kwh", {"kwh": -125.0}),
            ("unknown_district", "district_code D99 does not exist", {"district_code": "D99"}),
            ("malformed", "kwh is not a number", {"kwh": "n/a"}),
        ],
    )
    return df, pd.concat(bad, ignore_index=True)


def _mondays(start: date, days: int) -> list[date]:
    first = start + timedelta(days=(7 - start.weekday()) % 7)
    return [first + timedelta(weeks=i) for i in range((days - (first - start).days + 6) // 7)]


def _waste(rng: np.random.Generator, scale: float, start: date, days: int, n_bad: int, residents: np.ndarray) -> tuple:
    n = _count(16, scale)
    dist = rng.permutation(np.arange(n) % 8)
    labels = list(WASTE_STREAMS)
    # Every route collects refuse; other streams only on some routes, recycling on at least one per district.
    has = rng.random((n, 4)) < np.array([1.0, 0.8, 0.5, 0.3])
    for d in range(8):
        if not has[dist == d, 1].any():
            has[np.argmax(dist == d), 1] = True
    # A route_id is a collection round: its share of its district's residents, in tonnes a week.
    kg = np.array([WASTE_KG_PER_RESIDENT_WEEK[s] for s in labels])
    r, st = np.nonzero(has)
    weeks = _mondays(start, days)
    base = _served(residents, dist)[r] * kg[st] / 1000 * rng.lognormal(0, 0.25, len(r))
    tonnes = (base[:, None] * rng.lognormal(0, 0.1, (len(r), len(weeks)))).round(2)
    k, w = np.nonzero(rng.random((len(r), len(weeks))) >= 0.02)
    df = pd.DataFrame(
        {
            "route_id": [f"W{i + 1:03d}" for i in r[k]],
            "district_code": CODES[dist[r[k]]],
            "stream": np.array(labels)[st[k]],
            "week_start": [weeks[i].isoformat() for i in w],
            "tonnes": tonnes[k, w],
        }
    )
    df, bad = _corrupt(rng, df, n_bad, [("out_of_range", "negative tonnes", {"tonnes": -3.5})])
    return df, pd.concat(bad, ignore_index=True)


def _air(rng: np.random.Generator, scale: float, start: date, days: int, n_bad: int) -> tuple:
    total = _count(24, scale)
    n_a = (total + 1) // 2
    dist = rng.permutation(np.arange(total) % 8)  # every district gets at least one station
    lat, lon = _points(rng, dist)
    utc = pd.date_range(
        _local_midnight_utc(start),
        _local_midnight_utc(start + timedelta(days=days)),
        freq="15min",
        inclusive="left",
    )
    local = utc.tz_convert(TIMEZONE).tz_localize(None)
    day_idx = (local.normalize() - pd.Timestamp(start)).days.to_numpy()
    hour = local.hour.to_numpy() + local.minute.to_numpy() / 60
    t = len(utc)

    # Shared regional weather by day, a per-station level, diurnal shapes and noise.
    regional = rng.lognormal(0, 0.3, days)[day_idx]
    level = rng.lognormal(0, 0.25, (total, 1))
    rush = 1 + 0.4 * (np.exp(-((hour - 8) ** 2) / 4) + np.exp(-((hour - 18) ** 2) / 4))
    noise = rng.lognormal(0, 0.25, (4, total, t))
    pm25 = np.clip(10 * level * regional * rush * noise[0], 3, 60)
    pm10 = np.clip(pm25 * rng.uniform(1.4, 2.2, (total, 1)) * noise[1] ** 0.3, 5, 150)
    no2 = np.clip(15 * level * rush * noise[2], 2, 60)
    o3 = np.clip(30 * (1 + 0.4 * np.sin((hour - 9) / 24 * 2 * np.pi)) * noise[3], 5, 70)

    present = rng.random((total, t)) >= 0.02
    for s in rng.choice(total, max(1, total // 12), replace=False):  # offline for a few whole local days
        first = int(rng.integers(0, max(1, days - 3)))
        present[s] &= ~((day_idx >= first) & (day_idx < first + int(rng.integers(2, 5))))
    nulls = rng.random((4, total, t)) < 0.01

    def values(i: int, arr: np.ndarray, factor: float = 1.0) -> np.ndarray:
        return np.where(nulls[i], np.nan, (arr * factor).round(1))

    # Vendor A's firmware skips the repeated local hour on the fall-back day.
    keep_a = ~local.duplicated(keep="first")
    s, ti = np.nonzero(present[:n_a] & keep_a[None, :])
    a = (
        pd.DataFrame(
            {
                "sensor": [f"A-{i + 1:03d}" for i in range(n_a)],
                "lat": lat[:n_a],
                "lon": lon[:n_a],
            }
        )
        .iloc[s]
        .reset_index(drop=True)
    )
    a.insert(1, "ts", local.strftime("%Y-%m-%d %H:%M:%S").to_numpy()[ti])
    for i, (col, arr) in enumerate([("pm25", pm25), ("pm10", pm10), ("no2_ppb", no2), ("o3_ppb", o3)]):
        a.insert(2 + i, col, values(i, arr)[:n_a][s, ti])

    s, ti = np.nonzero(present[n_a:])
    b = (
        pd.DataFrame(
            {
                "station_id": [f"B-{i + 1:03d}" for i in range(total - n_a)],
                "latitude": lat[n_a:],
                "longitude": lon[n_a:],
            }
        )
        .iloc[s]
        .reset_index(drop=True)
    )
    b.insert(1, "observed_at", utc.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy()[ti])
    cols = [
        ("pm25_ugm3", pm25, 1.0),
        ("pm10_ugm3", pm10, 1.0),
        ("no2_ugm3", no2, 1.88),
        ("o3_ugm3", o3, 1.96),
    ]
    for i, (col, arr, factor) in enumerate(cols):
        b.insert(2 + i, col, values(i, arr, factor)[n_a:][s, ti])

    a, bad_a = _corrupt(
        rng,
        a,
        n_bad,
        [
            ("out_of_range", "pm25 negative", {"pm25": -5.0}),
            ("out_of_range", "pm25 above 1000", {"pm25": 5000.0}),
            ("malformed", "line is truncated, not valid JSON", {}),
        ],
    )
    bad_a.append(_duplicates(rng, a, n_bad))
    b, bad_b = _corrupt(
        rng,
        b,
        n_bad,
        [
            ("out_of_range", "pm25_ugm3 above 1000", {"pm25_ugm3": 5000.0}),
            ("malformed", "pm25_ugm3 is not a number", {"pm25_ugm3": "n/a"}),
        ],
    )
    return a, pd.concat(bad_a, ignore_index=True), b, pd.concat(bad_b, ignore_index=True)


def build(scale: float = 1, days: int = 90, start: date = date(2025, 1, 1), seed: int = 42) -> City:
    """Generate the whole city in memory, deterministically from `seed`."""
    rng = np.random.default_rng(seed)
    n_bad = _n_bad(scale)
    population = _population(rng, scale)
    residents = _residents(population)
    stops, rides, bad_rides = _transport(rng, scale, start, days, n_bad, residents)
    collisions, bad_collisions = _collisions(rng, scale, start, days, n_bad)
    # requesters draw from their own generator: the rest of the city is the same with or without them
    requests, bad_requests = _requests(rng, scale, start, days, n_bad, np.random.default_rng([seed, 311]))
    energy, bad_energy = _energy(rng, scale, start, days, n_bad, residents)
    waste, bad_waste = _waste(rng, scale, start, days, n_bad, residents)
    air_a, bad_a, air_b, bad_b = _air(rng, scale, start, days, n_bad)
    services = pd.DataFrame(
        [(c, v[0], v[1], v[2]) for c, v in SERVICES.items()],
        columns=["service_code", "service_name", "category", "target_days"],
    )
    return City(
        start=start,
        days=days,
        scale=scale,
        seed=seed,
        reference={
            "population": population,
            "crosswalk": _crosswalk(),
            "service_categories": services,
            "waste_streams": pd.DataFrame(list(WASTE_STREAMS.items()), columns=["source_label", "stream"]),
            "stops": stops,
        },
        clean={
            "ridership": rides,
            "collisions": collisions,
            "requests": requests,
            "energy": energy,
            "waste": waste,
            "air_a": air_a,
            "air_b": air_b,
        },
        bad={
            "ridership": bad_rides,
            "collisions": bad_collisions,
            "requests": bad_requests,
            "energy": bad_energy,
            "waste": bad_waste,
            "air_a": bad_a,
            "air_b": bad_b,
        },
    )


# ---------------------------------------------------------------------------------------------- writing


def _records(city: City, source: str) -> pd.DataFrame:
    """Clean plus bad records of a source, sorted by key so duplicates sit next to their original."""
    bad = city.bad[source].assign(_bad_kind=lambda d: d["kind"]).drop(columns=["kind", "detail"])
    both = pd.concat([city.clean[source].assign(_bad_kind=None), bad], ignore_index=True)
    order = _key(both, source).to_numpy()
    return both.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


def _key(df: pd.DataFrame, source: str) -> pd.Series:
    """The record_key of each row, e.g. "stop_id|service_date"."""
    cols = [df[c].astype(str) for c in KEYS[source]]
    key = cols[0]
    for col in cols[1:]:
        key = key + "|" + col
    return key


def _csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, lineterminator="\n")


def _sqlite(path: Path, ddl: str, table: str, df: pd.DataFrame) -> None:
    with sqlite3.connect(path) as con:
        con.execute(ddl)
        marks = ",".join("?" * len(df.columns))
        con.executemany(
            f"INSERT INTO {table} VALUES ({marks})", zip(*(df[c].tolist() for c in df.columns), strict=False)
        )
    con.close()


def _jsonl(df: pd.DataFrame, directory: Path, file_of: pd.Series, truncate: pd.Series) -> list[str]:
    """Write one JSON-lines file per value of file_of; cut the rows where `truncate` holds in half.

    Returns the "file:line" keys of the truncated lines, known only once the files are laid out.
    """
    directory.mkdir(parents=True, exist_ok=True)
    keys = []
    for name, part in df.groupby(file_of.to_numpy(), sort=True):
        lines = _unescape(part.drop(columns="_bad_kind").to_json(orient="records", lines=True)).splitlines()
        for i in np.nonzero(truncate[part.index].to_numpy())[0]:
            lines[i] = lines[i][: len(lines[i]) // 2]
            keys.append(f"{name}.jsonl:{i + 1}")
        (directory / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return keys


def _unescape(text: str) -> str:
    """Undo pandas' escaping of "/" as "\\/" (valid JSON, but not what the agencies' systems emit)."""
    return text.replace("\\/", "/")


def _xlsx(path: Path, rows: pd.DataFrame, stamp: datetime) -> None:
    """Write the weekly collections workbook with fixed metadata and zip timestamps (byte-reproducible)."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "collections"
    ws.append(["route_id", "district_code", "stream", "week_start", "tonnes"])
    for r in rows.itertuples(index=False):
        ws.append([r.route_id, r.district_code, r.stream, date.fromisoformat(r.week_start), float(r.tonnes)])
        ws.cell(ws.max_row, 4).number_format = "yyyy-mm-dd"
    buf = io.BytesIO()
    wb.save(buf)
    # openpyxl stamps "now" into core.xml and the zip entries; pin both to the generation's own date.
    iso = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:(created|modified)[^>]*>)[^<]*", rb"\g<1>" + iso.encode(), data)
            dst.writestr(
                zipfile.ZipInfo(item.filename, date_time=stamp.timetuple()[:6]),
                data,
                compress_type=zipfile.ZIP_DEFLATED,
            )


def write(city: City, out_dir: Path) -> pd.DataFrame:
    """Lay the city out under out_dir (replacing a previous generation); return the bad-record manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for rel in OWNED:
        p = out_dir / rel
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    ref = city.reference
    (out_dir / "districts.geojson").write_text(json.dumps(districts_geojson(), indent=1) + "\n")
    _csv(ref["population"], out_dir / "population.csv")
    _csv(ref["crosswalk"], out_dir / "district_crosswalk.csv")
    _csv(ref["service_categories"], out_dir / "service_categories.csv")
    _csv(ref["waste_streams"], out_dir / "waste_streams.csv")

    _sqlite(
        out_dir / "transport.sqlite",
        "CREATE TABLE stops(stop_id TEXT PRIMARY KEY, stop_name TEXT, zone_code TEXT, lat REAL, lon REAL)",
        "stops",
        ref["stops"],
    )
    # No PRIMARY KEY on (stop_id, service_date): the silo really does contain duplicate rows.
    rides = _records(city, "ridership").drop(columns="_bad_kind")
    _sqlite(
        out_dir / "transport.sqlite",
        "CREATE TABLE daily_ridership(stop_id TEXT, service_date TEXT, mode TEXT, route_id TEXT, "
        "boardings INTEGER, updated_at TEXT)",
        "daily_ridership",
        rides,
    )
    _sqlite(
        out_dir / "safety.sqlite",
        "CREATE TABLE collisions(collision_id TEXT, crash_local_time TEXT, killed INTEGER, injured INTEGER, "
        "latitude REAL, longitude REAL)",
        "collisions",
        _records(city, "collisions").drop(columns="_bad_kind"),
    )

    o311 = out_dir / "open311"
    o311.mkdir()
    reqs = _records(city, "requests").drop(columns="_bad_kind")
    (o311 / "requests.json").write_text(_unescape(reqs.to_json(orient="records", indent=1)) + "\n")
    services = [
        {
            "service_code": c,
            "service_name": v[0],
            "description": v[0],
            "metadata": False,
            "type": "realtime",
            "keywords": v[1],
            "group": v[1],
        }
        for c, v in SERVICES.items()
    ]
    (o311 / "services.json").write_text(json.dumps(services, indent=1) + "\n")

    energy = _records(city, "energy")
    for month, part in energy.groupby("month", sort=True):
        _csv(part.drop(columns="_bad_kind"), out_dir / "landing" / "energy" / f"energy_{month}.csv")
    waste = _records(city, "waste")
    (out_dir / "landing" / "waste").mkdir(parents=True)
    stamp = datetime.combine(city.start, datetime.min.time())
    for week, part in waste.groupby("week_start", sort=True):
        _xlsx(out_dir / "landing" / "waste" / f"waste_{week}.xlsx", part, stamp)

    air = out_dir / "landing" / "air"
    a = _records(city, "air_a")
    # Vendor A's malformed records are broken lines; vendor B's are valid JSON with a bad value.
    a_keys = _jsonl(a, air / "vendor_a", a["ts"].str[:10], a["_bad_kind"] == "malformed")
    b = _records(city, "air_b")
    _jsonl(b, air / "vendor_b", b["observed_at"].str[:10], pd.Series(False, index=b.index))

    manifest = []
    for source, bad in city.bad.items():
        if bad.empty:
            continue
        keys = _key(bad, source)
        if source == "air_a":
            keys[bad["kind"] == "malformed"] = sorted(a_keys)
        manifest.append(
            pd.DataFrame({"source": SOURCES[source], "record_key": keys, "kind": bad["kind"], "detail": bad["detail"]})
        )
    manifest_df = pd.concat(manifest, ignore_index=True)
    _csv(manifest_df, out_dir / "bad_records.csv")
    return manifest_df


def generate(out_dir: Path, scale: float = 1, days: int = 90, start: date = date(2025, 1, 1), seed: int = 42) -> dict:
    """Generate the reference city into out_dir and return a summary (records per source, bad records)."""
    # Imported here because ground_truth imports this module's geography.
    from orchestration.reference_city import ground_truth

    out_dir = Path(out_dir)
    city = build(scale=scale, days=days, start=start, seed=seed)
    manifest = write(city, out_dir)
    truth = ground_truth.compute(city.clean, city.reference, city.start, city.days)
    _csv(truth, out_dir / "ground_truth.csv")
    summary = {
        "sources": {SOURCES[s]: {"clean": len(city.clean[s]), "bad": len(city.bad[s])} for s in SOURCES},
        "stops": len(city.reference["stops"]),
        "bad_records": len(manifest),
        "ground_truth_rows": len(truth),
    }
    params = {"scale": scale, "days": days, "start": start.isoformat(), "seed": seed, "timezone": TIMEZONE}
    (out_dir / "generation.json").write_text(json.dumps({"parameters": params, "summary": summary}, indent=1) + "\n")
    return summary
