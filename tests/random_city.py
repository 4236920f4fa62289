"""Random valid cities and their indicators computed independently (pandas + shapely, not citylake's SQL).

`make_city(seed, root)` writes a city folder under `root` (district boundaries as GeoJSON, a population
CSV, CSV drops, city.yaml) and returns the city.yaml path and the indicator rows citylake must publish
for it, counted here from the generated records by the rules of PRODUCT.md and docs/indicators.md.

Everything random comes from `random.Random(seed)`, so a seed is a city: the same seed writes the same
files and expects the same rows. Dates are anchored to a fixed past day, not today.

What varies: agency and source names (sometimes the reference city's), which entities the city has
(road_collisions, service_requests, air_quality_observations; at least one), 1 to 50 districts on a
grid (some MultiPolygons, some with a hole), census years, the city's zone and each source's zone
(DST and odd offsets), 1 day to 20 years of sparse history, source column names (so `columns:`
differ), timestamps as local wall times, UTC with Z or with an offset, districts by code or by
coordinates. Some records carry no district (they count toward CITY only); a few (under 5 %, below
the 10 % gate) give a district that does not exist or coordinates in no district (a hole, off the
map): those are held back and count nowhere (docs/indicators.md, "Area"). Local wall times in a
daylight-saving gap or overlap are never generated.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import shapely
import yaml
from shapely.geometry import MultiPolygon, Point, Polygon

from orchestration.reference_city.ground_truth import COLUMNS

UTC = dt.UTC
ZONES = [
    "America/Chicago",
    "Europe/Berlin",
    "Australia/Adelaide",
    "America/St_Johns",
    "Asia/Kathmandu",
    "Pacific/Chatham",
]
ANCHOR = dt.date(2025, 12, 31)  # the latest possible record day: fixed, so a seed is reproducible
CELL = 0.01  # degrees per grid cell
WORDS = [
    "alpha",
    "river",
    "date",
    "time",
    "order",
    "select",
    "group",
    "value",
    "status",
    "zeit",
    "ort",
    "nummer",
    "code",
    "kind",
    "type",
    "when",
    "where",
    "lat",
    "lon",
    "x",
    "y",
    "dead",
    "hurt",
    "opened",
    "closed",
    "station",
    "reading",
    "pm",
    "fine",
    "dust",
    "ward",
    "zone",
    "area",
    "id",
    "key",
    "ref",
    "report",
    "event",
    "incident",
    "sensor",
    "measure",
    "count",
    "total",
    "number",
    "label",
    "created",
]
REFERENCE_NAMES = {
    "road_collisions": ("safety", "collisions"),
    "service_requests": ("service_requests", "requests"),
    "air_quality_observations": ("environment", "air_readings"),
}
INDICATOR = {
    "road_collisions": "iso37120_18_8",
    "service_requests": "svc_311_median_days_to_close",
    "air_quality_observations": "iso37120_8_1",
}
GRAINS = ("month", "year")


@dataclass
class District:
    code: str
    geometry: Polygon | MultiPolygon
    parts: list[Polygon]


@dataclass
class Source:
    entity: str
    agency: str
    name: str
    timezone: str
    time_format: str  # local | local_t | utc_z | offset | date (air only: a daily mean)
    district_from: str  # code | coordinates
    columns: dict[str, str] = field(default_factory=dict)  # role -> source column name
    rows: list[dict[str, str]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # published records, for the expectation


class _Names:
    """Unique source column names in random styles (DuckDB names are case-insensitive)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def __call__(self) -> str:
        while True:
            words = self.rng.sample(WORDS, self.rng.choice([1, 2, 2, 3]))
            style = self.rng.choice(["snake", "upper", "title", "camel"])
            if style == "snake":
                name = "_".join(words)
            elif style == "upper":
                name = "_".join(words).upper()
            elif style == "title":
                name = " ".join(w.capitalize() for w in words)
            else:
                name = words[0] + "".join(w.capitalize() for w in words[1:])
            if name.lower() not in self.used:
                self.used.add(name.lower())
                return name


def _snake(rng: random.Random, used: set[str]) -> str:
    while True:
        name = "_".join(rng.sample(WORDS, rng.choice([1, 2])))
        if name[0].isalpha() and name not in used:
            used.add(name)
            return name


def _square(x: float, y: float, size: float) -> list[tuple[float, float]]:
    return [(x, y), (x + size, y), (x + size, y + size), (x, y + size), (x, y)]


def _districts(rng: random.Random) -> tuple[list[District], tuple[float, float]]:
    n = rng.choice([1, 1, 2, 3]) if rng.random() < 0.3 else rng.randint(2, 50)
    cols = math.ceil(math.sqrt(n))
    lon0, lat0 = round(rng.uniform(-170, 160), 2), round(rng.uniform(-60, 60), 2)
    codes: set[str] = set()
    out = []
    for k in range(n):
        while True:
            code = rng.choice(["D", "W", "Z", "ward-", ""]) + str(rng.randint(1, 999)).zfill(rng.choice([1, 2, 3]))
            if code.upper() not in codes:
                codes.add(code.upper())
                break
        x, y = lon0 + (k % cols) * CELL, lat0 + (k // cols) * CELL
        holes = [_square(x + 0.3 * CELL, y + 0.3 * CELL, 0.3 * CELL)] if rng.random() < 0.25 else []
        parts = [Polygon(_square(x, y, CELL), holes)]
        if rng.random() < 0.25:  # an island off the grid, west of it
            parts.append(Polygon(_square(lon0 - (k + 1) * 2 * CELL, lat0 - 3 * CELL, CELL / 2)))
        geometry = parts[0] if len(parts) == 1 else MultiPolygon(parts)
        out.append(District(code, geometry, parts))
    return out, (lon0, lat0)


def _geojson(districts: list[District], code_property: str) -> dict:
    features = []
    for d in districts:
        geometry = shapely.geometry.mapping(d.geometry)
        features.append(
            {
                "type": "Feature",
                "properties": {code_property: d.code, "name": f"District {d.code}"},
                "geometry": json.loads(json.dumps(geometry)),
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _point_in(rng: random.Random, d: District) -> tuple[str, str]:
    """A point well inside one part of `d` (not in its hole, not near an edge), as 6-decimal texts."""
    part = rng.choice(d.parts)
    minx, miny, maxx, maxy = part.bounds
    while True:
        px = minx + rng.uniform(0.02, 0.98) * (maxx - minx)
        py = miny + rng.uniform(0.02, 0.98) * (maxy - miny)
        p = Point(px, py)
        if (
            part.contains(p)
            and part.exterior.distance(p) > 1e-5
            and all(Polygon(h).distance(p) > 1e-5 for h in part.interiors)
        ):
            return f"{py:.6f}", f"{px:.6f}"


def _point_nowhere(rng: random.Random, districts: list[District], origin: tuple[float, float]) -> tuple[str, str]:
    """Coordinates in no district: in a hole when there is one, else off the map."""
    holed = [d for d in districts if d.parts[0].interiors]
    if holed and rng.random() < 0.7:
        hx, hy = holed[rng.randrange(len(holed))].parts[0].interiors[0].coords[0]
        px, py = hx + rng.uniform(0.1, 0.9) * 0.3 * CELL, hy + rng.uniform(0.1, 0.9) * 0.3 * CELL
    else:
        px, py = origin[0] + rng.uniform(0.1, 0.9) * CELL, origin[1] - rng.uniform(1.1, 1.9) * CELL
    return f"{py:.6f}", f"{px:.6f}"


def _locate(lat: str, lon: str, districts: list[District]) -> str | None:
    """Point-in-polygon, independently: the lowest code among the districts that cover the point."""
    p = Point(float(lon), float(lat))
    hits = sorted(d.code for d in districts if d.geometry.covers(p))
    return hits[0] if hits else None


def _clean_wall(rng: random.Random, tz: ZoneInfo, day: dt.date, with_seconds: bool) -> dt.datetime:
    """A local wall time on `day` that exists exactly once in `tz` (not in a DST gap or overlap)."""
    while True:
        wall = dt.datetime.combine(
            day, dt.time(rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59) if with_seconds else 0)
        )
        a, b = wall.replace(tzinfo=tz, fold=0), wall.replace(tzinfo=tz, fold=1)
        if a.utcoffset() == b.utcoffset():
            return a


def _write_time(instant: dt.datetime, source: Source, with_seconds: bool) -> str:
    local = instant.astimezone(ZoneInfo(source.timezone))
    fmt = "%Y-%m-%d %H:%M:%S" if with_seconds else "%Y-%m-%d %H:%M"
    if source.time_format == "local":
        return local.strftime(fmt)
    if source.time_format == "local_t":
        return local.strftime("%Y-%m-%dT%H:%M:%S")
    if source.time_format == "utc_z":
        return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if source.time_format == "offset":
        return local.isoformat(timespec="seconds")
    raise ValueError(source.time_format)


def _instant(rng: random.Random, source: Source, day: dt.date, with_seconds: bool) -> dt.datetime:
    """A random instant whose wall time in the source's zone is `day` (and is unambiguous)."""
    return _clean_wall(rng, ZoneInfo(source.timezone), day, with_seconds).astimezone(UTC)


def _random_day(rng: random.Random, start: dt.date, end: dt.date) -> dt.date:
    return start + dt.timedelta(days=rng.randint(0, (end - start).days))


def _city_date(instant: dt.datetime, city_tz: str) -> dt.date:
    return instant.astimezone(ZoneInfo(city_tz)).date()


def _place(rng: random.Random, source: Source, districts, origin, row: dict, record: dict, bad_left: list[int]):
    """Fill the district columns of a row; record['district'] is the expected district (None: CITY
    only); record['held'] marks a record citylake must hold back."""
    c = source.columns
    roll = rng.random()
    if roll < 0.1 and bad_left[0] > 0:
        bad_left[0] -= 1
        record["held"] = True
        if source.district_from == "code":
            row[c["district"]] = "NOPE" + str(rng.randint(1, 99))
        else:
            row[c["lat"]], row[c["lon"]] = _point_nowhere(rng, districts, origin)
        return
    if roll < 0.25:  # no district given: CITY only
        record["district"] = None
        return
    d = rng.choice(districts)
    if source.district_from == "code":
        row[c["district"]] = d.code
        record["district"] = d.code
    else:
        row[c["lat"]], row[c["lon"]] = _point_in(rng, d)
        record["district"] = _locate(row[c["lat"]], row[c["lon"]], districts)


def _collisions(rng, source: Source, n: int, start, end, districts, origin, city_tz: str):
    names = _Names(rng)
    c = source.columns
    for role in ("id", "when", "dead", "hurt"):
        c[role] = names()
    split = source.time_format == "local" and rng.random() < 0.3
    if split:
        c["day"], c["clock"] = names(), names()
    if source.district_from == "code":
        c["district"] = names()
    else:
        c["lat"], c["lon"] = names(), names()
    bad_left = [n // 20]
    for k in range(n):
        instant = _instant(rng, source, _random_day(rng, start, end), with_seconds=False)
        dead = rng.choice([0, 0, 0, 0, 1, 2])
        row = {c["id"]: f"C{k:05d}-{rng.randint(0, 99)}", c["dead"]: str(dead), c["hurt"]: str(rng.randint(0, 4))}
        text = _write_time(instant, source, with_seconds=False)
        if split:
            row[c["day"]], row[c["clock"]] = text.split(" ")
        else:
            row[c["when"]] = text
        record = {"date": _city_date(instant, city_tz), "dead": dead}
        _place(rng, source, districts, origin, row, record, bad_left)
        source.rows.append(row)
        if not record.get("held"):
            source.records.append(record)
    mapping = {
        "collision_id": c["id"],
        "accident_at": f'"{c["day"]}" || \' \' || "{c["clock"]}"' if split else c["when"],
        "dead_within_30_days": c["dead"],
        "injured": c["hurt"],
    }
    return mapping, [c["id"]]


def _requests(rng, source: Source, n: int, start, end, districts, origin, city_tz: str):
    names = _Names(rng)
    c = source.columns
    for role in ("id", "opened", "closed", "kind", "district" if source.district_from == "code" else "lat"):
        c[role] = names()
    if source.district_from == "coordinates":
        c["lon"] = names()
    bad_left = [n // 20]
    tz = ZoneInfo(source.timezone)
    for k in range(n):
        with_seconds = rng.random() < 0.5
        opened = _instant(rng, source, _random_day(rng, start, end), with_seconds)
        row = {
            c["id"]: str(10_000 + k),
            c["opened"]: _write_time(opened, source, with_seconds),
            c["kind"]: rng.choice(["POTHOLE", "NOISE", "GRAFFITI"]),
        }
        days = None
        if rng.random() < 0.75:  # closed: a clean wall time later, at most ~40 days on
            while True:
                delta = dt.timedelta(seconds=rng.randint(60, 40 * 86400))
                closed = (opened + delta).replace(microsecond=0)
                if not with_seconds:
                    closed = closed.replace(second=0)
                wall = closed.astimezone(tz).replace(tzinfo=None)
                if (
                    closed > opened
                    and wall.replace(tzinfo=tz, fold=0).utcoffset() == wall.replace(tzinfo=tz, fold=1).utcoffset()
                    and closed.astimezone(UTC).date() <= ANCHOR + dt.timedelta(days=30)
                ):
                    break
            row[c["closed"]] = _write_time(closed, source, with_seconds)
            days = (closed - opened).total_seconds() / 86400.0
        record = {"date": _city_date(opened, city_tz), "days": days}
        _place(rng, source, districts, origin, row, record, bad_left)
        source.rows.append(row)
        if not record.get("held"):
            source.records.append(record)
    mapping = {
        "service_request_id": c["id"],
        "requested_at": c["opened"],
        "closed_at": c["closed"],
        "service_code": c["kind"],
    }
    return mapping, [c["id"]]


def _air(rng, source: Source, n: int, start, end, districts, origin, city_tz: str):
    names = _Names(rng)
    c = source.columns
    for role in ("station", "when", "pm25", "district" if source.district_from == "code" else "lat"):
        c[role] = names()
    if source.district_from == "coordinates":
        c["lon"] = names()
    stations = []
    for s in range(rng.randint(1, 6)):
        place: dict[str, str] = {}
        if rng.random() < 0.2:
            district = None  # gives no district: CITY only
        else:
            d = rng.choice(districts)
            if source.district_from == "code":
                place[c["district"]] = d.code
                district = d.code
            else:
                place[c["lat"]], place[c["lon"]] = _point_in(rng, d)
                district = _locate(place[c["lat"]], place[c["lon"]], districts)
        stations.append((f"ST-{s}-{rng.randint(0, 9)}", place, district))
    seen: set[tuple[str, str]] = set()
    if source.time_format == "date":  # one daily mean per station and day at most
        n = min(n, len(stations) * ((end - start).days + 1))
    while len(source.rows) < n:
        station, place, district = rng.choice(stations)
        day = _random_day(rng, start, end)
        if source.time_format == "date":
            when, local_date = day.isoformat(), day  # a daily mean: that local date
        else:
            instant = _instant(rng, source, day, with_seconds=True)
            when, local_date = _write_time(instant, source, with_seconds=True), _city_date(instant, city_tz)
        if (station, when) in seen:
            continue
        seen.add((station, when))
        pm25 = round(rng.uniform(0, 120), 1)
        source.rows.append({c["station"]: station, c["when"]: when, c["pm25"]: f"{pm25:.1f}", **place})
        source.records.append({"date": local_date, "district": district, "station": station, "pm25": pm25})
    mapping = {"station_id": c["station"], "observed_at": c["when"], "pm25": c["pm25"]}
    if source.district_from == "coordinates" and rng.random() < 0.5:
        mapping.update(latitude=c["lat"], longitude=c["lon"])
    return mapping, [c["station"], c["when"]]


BUILDERS = {"road_collisions": _collisions, "service_requests": _requests, "air_quality_observations": _air}


def _population(census: pd.DataFrame, area: str, period_start: dt.date) -> float:
    rows = census[census["area_id"] == area].sort_values("year")
    before = rows[rows["year"] <= period_start.year]
    return float((before if len(before) else rows.head(1))["population"].iloc[-1])


def _periods(frame: pd.DataFrame) -> pd.DataFrame:
    """Each record once per grain and once per area (its district when known, and CITY)."""
    areas = pd.concat(
        [frame[frame["district"].notna()].assign(area_id=lambda f: f["district"]), frame.assign(area_id="CITY")],
        ignore_index=True,
    )
    out = []
    for grain in GRAINS:
        starts = [d.replace(day=1) if grain == "month" else d.replace(month=1, day=1) for d in areas["date"]]
        out.append(areas.assign(period_grain=grain, period_start=starts))
    return pd.concat(out, ignore_index=True)


def _slot_days(grain: str, period_start: dt.date, span: tuple[dt.date, dt.date]) -> int:
    if grain == "month":
        nxt = (period_start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    else:
        nxt = period_start.replace(year=period_start.year + 1)
    first, last = max(period_start, span[0]), min(nxt - dt.timedelta(days=1), span[1])
    return (last - first).days + 1


def expected_indicators(sources: list[Source], census: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for entity in {s.entity for s in sources}:
        records = pd.DataFrame([r for s in sources if s.entity == entity for r in s.records])
        if records.empty:
            continue
        periods = _periods(records)
        key = ["area_id", "period_grain", "period_start"]
        for (area, grain, start), g in periods.groupby(key, sort=True):
            coverage = 1.0 if area != "CITY" else g["district"].notna().sum() / len(g)
            if entity == "road_collisions":
                population = _population(census, area, start)
                deaths = float(g["dead"].sum())
                rows.append(
                    (
                        INDICATOR[entity],
                        area,
                        grain,
                        start,
                        deaths / (population / 100000.0),
                        deaths,
                        population / 100000.0,
                        coverage,
                    )
                )
            elif entity == "service_requests":
                closed = g["days"].dropna()
                if len(closed):
                    rows.append(
                        (
                            INDICATOR[entity],
                            area,
                            grain,
                            start,
                            float(closed.median()),
                            None,
                            float(len(closed)),
                            coverage,
                        )
                    )
            else:
                span = (records["date"].min(), records["date"].max())
                daily = g.groupby(["station", "date"])["pm25"].mean().reset_index()
                station_means = daily.groupby("station")["pm25"].agg(["mean", "count"])
                numerator = float(station_means["mean"].sum())
                stations = len(station_means)
                coverage = station_means["count"].sum() / (stations * _slot_days(grain, start, span))
                rows.append(
                    (INDICATOR[entity], area, grain, start, numerator / stations, numerator, float(stations), coverage)
                )
    return pd.DataFrame(rows, columns=COLUMNS)  # the indicators mart's columns (only the names are shared)


def _write_csvs(rng: random.Random, folder: Path, source: Source) -> None:
    folder.mkdir(parents=True)
    header = list(dict.fromkeys(source.columns[r] for r in source.columns))
    rows = source.rows[:]
    rng.shuffle(rows)
    files = rng.randint(1, 3)
    for k in range(files):
        chunk = rows[k::files]
        frame = pd.DataFrame(chunk, columns=header)
        frame.to_csv(folder / f"part-{k}.csv", index=False)


def make_city(seed: int, root: Path) -> tuple[Path, pd.DataFrame]:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    city_tz = rng.choice(ZONES)
    districts, origin = _districts(rng)
    code_property = rng.choice(["code", "ward", "DISTRICT_ID", "zone"])
    (root / "districts.geojson").write_text(json.dumps(_geojson(districts, code_property)))

    span_days = int(round(math.exp(rng.uniform(0, math.log(20 * 365)))) - 1)
    end = ANCHOR - dt.timedelta(days=rng.randint(0, 2000))
    start = end - dt.timedelta(days=span_days)

    census_years = sorted(rng.sample(range(start.year - 3, end.year + 1), rng.randint(1, 3)))
    census = pd.DataFrame(
        [(d.code, y, rng.randint(500, 200_000)) for d in districts for y in census_years],
        columns=["area_id", "year", "population"],
    )
    census = pd.concat([census, census.groupby("year", as_index=False)["population"].sum().assign(area_id="CITY")])
    census[census["area_id"] != "CITY"].rename(columns={"area_id": "code"})[["code", "population", "year"]].to_csv(
        root / "population.csv", index=False
    )

    entities = rng.sample(sorted(BUILDERS), rng.choice([1, 2, 2, 3, 3]))
    used_agencies: set[str] = set()
    sources: list[Source] = []
    agencies: dict[str, dict] = {}
    for entity in entities:
        if rng.random() < 0.3 and REFERENCE_NAMES[entity][0] not in used_agencies:
            agency, name = REFERENCE_NAMES[entity]
            used_agencies.add(agency)
        else:
            agency, name = _snake(rng, used_agencies), _snake(rng, set())
        formats = ["local", "local_t", "utc_z", "offset"] + (["date"] if entity == "air_quality_observations" else [])
        source = Source(
            entity=entity,
            agency=agency,
            name=name,
            timezone=city_tz if rng.random() < 0.5 else rng.choice(ZONES),
            time_format=rng.choice(formats),
            district_from=rng.choice(["code", "coordinates"]),
        )
        n = rng.randint(20, 150)
        mapping, key = BUILDERS[entity](rng, source, n, start, end, districts, origin, city_tz)
        sources.append(source)
        folder = root / "drop" / f"{agency}-{name}"
        _write_csvs(rng, folder, source)
        spec: dict = {
            "kind": "files",
            "path": f"./drop/{agency}-{name}/*.csv",
            "format": "csv",
            "primary_key": key,
            "feeds": entity,
            "columns": mapping,
        }
        if source.timezone != city_tz or rng.random() < 0.5:
            spec["timezone"] = source.timezone
        c = source.columns
        spec["district"] = (
            {"from": "code", "column": c["district"]}
            if source.district_from == "code"
            else {"from": "coordinates", "lat": c["lat"], "lon": c["lon"]}
        )
        agencies.setdefault(agency, {})[name] = spec

    cfg = {
        "city": {"name": f"Random {seed}", "timezone": city_tz},
        "lake": {"root": "./lake"},
        "state_dir": "./state",
        "districts": {
            "boundaries": "./districts.geojson",
            "code_property": code_property,
            "population": "./population.csv",
        },
        "agencies": agencies,
    }
    config = root / "city.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    expected = expected_indicators(sources, census)
    (root / "expected_indicators.csv").write_text(expected.to_csv(index=False))
    return config, expected
