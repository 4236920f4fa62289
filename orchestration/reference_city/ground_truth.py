"""The true indicator values of the reference city, computed in pandas from its clean records.

This deliberately shares nothing with the SQL models: it reads the sources' native columns (local or
UTC timestamps, ppb or ug/m3, requester-typed district names, zone codes) and applies the counting rules
of PRODUCT.md directly, so the pipeline's marts can be checked against it.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import shapely

from orchestration.reference_city.generate import TIMEZONE, districts_geojson

COLUMNS = [
    "indicator_id",
    "area_id",
    "period_grain",
    "period_start",
    "value",
    "numerator",
    "denominator",
    "coverage",
]
PPB_TO_UGM3 = {"no2": 1.88, "o3": 1.96}
AIR = {"pm25": "iso37120_8_1", "pm10": "iso37120_8_2", "no2": "iso37120_8_4", "o3": "iso37120_8_6"}
GROUP = ["area_id", "period_grain", "period_start"]


def _norm(names: pd.Series) -> pd.Series:
    """Alias matching key: trimmed, inner whitespace collapsed, case-folded."""
    return names.astype("string").str.strip().str.replace(r"\s+", " ", regex=True).str.casefold()


def _district_by_name(names: pd.Series, crosswalk: pd.DataFrame) -> pd.Series:
    lookup = dict(zip(_norm(crosswalk["alias"]), crosswalk["district_code"], strict=False))
    return _norm(names).map(lookup).astype(object).where(lambda s: s.notna(), None)


def _district_by_point(lat: pd.Series, lon: pd.Series) -> pd.Series:
    out = pd.Series([None] * len(lat), index=lat.index, dtype=object)
    for feature in districts_geojson()["features"]:
        polygon = shapely.Polygon(feature["geometry"]["coordinates"][0])
        inside = shapely.contains_xy(polygon, lon.to_numpy(float), lat.to_numpy(float))
        out[inside] = feature["properties"]["code"]
    return out


def _expand(df: pd.DataFrame, day: pd.Series) -> pd.DataFrame:
    """One row per (record, area, grain): district (when known) and CITY, month and year of `day`."""
    day = pd.to_datetime(day)
    month = df.assign(period_grain="month", period_start=day.dt.to_period("M").dt.start_time.dt.date)
    year = df.assign(period_grain="year", period_start=day.dt.to_period("Y").dt.start_time.dt.date)
    periods = pd.concat([month, year], ignore_index=True)
    known = periods[periods["district"].notna()].assign(area_id=lambda d: d["district"])
    return pd.concat([known, periods.assign(area_id="CITY")], ignore_index=True)


class _Calendar:
    """Population and the number of expected days/months/weeks of a period within the generated range."""

    def __init__(self, population: pd.DataFrame, start: date, days: int) -> None:
        self.population = population
        self.start, self.end = start, start + timedelta(days=days)

    def people(self, area: str, grain: str, period_start: date) -> float:
        years = sorted(self.population["year"].unique())
        year = max([y for y in years if y <= period_start.year], default=years[0])
        rows = self.population[self.population["year"] == year]
        if area != "CITY":
            rows = rows[rows["code"] == area]
        return float(rows["population"].sum())

    def _days(self, grain: str, period_start: date) -> list[date]:
        period_end = (pd.Timestamp(period_start) + pd.DateOffset(months=1 if grain == "month" else 12)).date()
        lo, hi = max(period_start, self.start), min(period_end, self.end)
        return [lo + timedelta(days=i) for i in range(max(0, (hi - lo).days))]

    def n_days(self, grain: str, period_start: date) -> int:
        return len(self._days(grain, period_start))

    def n_months(self, grain: str, period_start: date) -> int:
        return sum(d.day == 1 for d in self._days(grain, period_start))

    def n_weeks(self, grain: str, period_start: date) -> int:
        return sum(d.weekday() == 0 for d in self._days(grain, period_start))


def _rows(indicator: str, g: pd.DataFrame, value: pd.Series, numerator, denominator, coverage) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "indicator_id": indicator,
            "area_id": g["area_id"].to_numpy(),
            "period_grain": g["period_grain"].to_numpy(),
            "period_start": g["period_start"].to_numpy(),
            "value": np.asarray(value, float),
            "numerator": np.asarray(numerator, float),
            "denominator": np.asarray(denominator, float),
            "coverage": np.asarray(coverage, float),
        }
    )


def _apply(g: pd.DataFrame, fn) -> np.ndarray:
    return np.array(
        [fn(a, gr, ps) for a, gr, ps in zip(g["area_id"], g["period_grain"], g["period_start"], strict=False)]
    )


def _air(clean: dict[str, pd.DataFrame], cal: _Calendar) -> list[pd.DataFrame]:
    a = clean["air_a"]
    a = pd.DataFrame(
        {
            "station": a["sensor"],
            "lat": a["lat"],
            "lon": a["lon"],
            "day": pd.to_datetime(a["ts"]).dt.date,  # already local wall time
            "pm25": a["pm25"].astype(float),
            "pm10": a["pm10"].astype(float),
            "no2": a["no2_ppb"].astype(float) * PPB_TO_UGM3["no2"],
            "o3": a["o3_ppb"].astype(float) * PPB_TO_UGM3["o3"],
        }
    )
    b = clean["air_b"]
    b = pd.DataFrame(
        {
            "station": b["station_id"],
            "lat": b["latitude"],
            "lon": b["longitude"],
            "day": pd.to_datetime(b["observed_at"], utc=True).dt.tz_convert(TIMEZONE).dt.date,
            "pm25": b["pm25_ugm3"].astype(float),
            "pm10": b["pm10_ugm3"].astype(float),
            "no2": b["no2_ugm3"].astype(float),
            "o3": b["o3_ugm3"].astype(float),
        }
    )
    readings = pd.concat([a, b], ignore_index=True)
    stations = readings.groupby("station")[["lat", "lon"]].first()
    district = _district_by_point(stations["lat"], stations["lon"])
    out = []
    for pollutant, indicator in AIR.items():
        daily = readings.dropna(subset=[pollutant]).groupby(["station", "day"], as_index=False)[pollutant].mean()
        daily["district"] = daily["station"].map(district)
        x = _expand(daily, daily["day"])
        station = x.groupby([*GROUP, "station"], as_index=False).agg(mean=(pollutant, "mean"), n=("day", "size"))
        g = station.groupby(GROUP, as_index=False).agg(num=("mean", "sum"), den=("station", "size"), n=("n", "sum"))
        expected = g["den"] * _apply(g, lambda a, gr, ps: cal.n_days(gr, ps))
        out.append(_rows(indicator, g, g["num"] / g["den"], g["num"], g["den"], g["n"] / expected))
    return out


def _energy(clean: dict[str, pd.DataFrame], cal: _Calendar) -> list[pd.DataFrame]:
    e = clean["energy"].assign(kwh=lambda d: d["kwh"].astype(float))
    e["district"] = e["district_code"].where(e["district_code"].fillna("").astype(str).str.strip() != "", None)
    out = []
    for indicator, rows in [("iso37120_7_1", e[e["sector"] == "residential"]), ("iso37120_7_5", e)]:
        x = _expand(rows, rows["month"] + "-01")
        g = x.groupby(GROUP, as_index=False).agg(num=("kwh", "sum"), n=("kwh", "size"), meters=("meter_id", "nunique"))
        pop = _apply(g, cal.people)
        expected = g["meters"] * _apply(g, lambda a, gr, ps: cal.n_months(gr, ps))
        out.append(_rows(indicator, g, g["num"] / pop, g["num"], pop, g["n"] / expected))
    return out


def _waste(clean: dict[str, pd.DataFrame], reference: dict[str, pd.DataFrame], cal: _Calendar) -> list:
    w = clean["waste"].assign(tonnes=lambda d: d["tonnes"].astype(float), district=lambda d: d["district_code"])
    streams = dict(zip(reference["waste_streams"]["source_label"], reference["waste_streams"]["stream"], strict=False))
    w["recycled"] = w["tonnes"].where(w["stream"].map(streams) == "recycling", 0.0)
    w["route_stream"] = w["route_id"].astype(str) + "|" + w["stream"].astype(str)  # typed even when empty
    x = _expand(w, w["week_start"])
    g = x.groupby(GROUP, as_index=False).agg(
        total=("tonnes", "sum"),
        recycled=("recycled", "sum"),
        n=("tonnes", "size"),
        pairs=("route_stream", "nunique"),
    )
    pop = _apply(g, cal.people)
    coverage = g["n"] / (g["pairs"] * _apply(g, lambda a, gr, ps: cal.n_weeks(gr, ps)))
    return [
        _rows("iso37120_16_2", g, g["total"] / pop, g["total"], pop, coverage),
        _rows("iso37120_16_3", g, 100 * g["recycled"] / g["total"], g["recycled"], g["total"], coverage),
    ]


def _ridership(clean: dict[str, pd.DataFrame], reference: dict[str, pd.DataFrame], cal: _Calendar) -> list:
    stops = reference["stops"]
    zone = dict(zip(stops["stop_id"], _district_by_name(stops["zone_code"], reference["crosswalk"]), strict=False))
    r = clean["ridership"].assign(district=lambda d: d["stop_id"].map(zone))
    x = _expand(r, r["service_date"])
    g = x.groupby(GROUP, as_index=False).agg(
        num=("boardings", "sum"), n=("boardings", "size"), stops=("stop_id", "nunique")
    )
    pop = _apply(g, cal.people)
    expected = g["stops"] * _apply(g, lambda a, gr, ps: cal.n_days(gr, ps))
    return [_rows("iso37120_18_3", g, g["num"] / pop, g["num"], pop, g["n"] / expected)]


def _collisions(clean: dict[str, pd.DataFrame], cal: _Calendar) -> list[pd.DataFrame]:
    c = clean["collisions"]
    c = c.assign(district=_district_by_point(c["latitude"], c["longitude"]))
    x = _expand(c, c["crash_local_time"].str[:10]).assign(known=lambda d: d["district"].notna())
    g = x.groupby(GROUP, as_index=False).agg(killed=("killed", "sum"), known=("known", "mean"))
    per_100k = _apply(g, cal.people) / 100_000
    return [_rows("iso37120_18_8", g, g["killed"] / per_100k, g["killed"], per_100k, g["known"])]


def _requests(clean: dict[str, pd.DataFrame], reference: dict[str, pd.DataFrame]) -> list[pd.DataFrame]:
    r = clean["requests"]
    requested = pd.to_datetime(r["requested_datetime"], utc=True, format="ISO8601")
    closed = pd.to_datetime(r["closed_datetime"], utc=True, format="ISO8601")
    cats = reference["service_categories"]
    target = r["service_code"].map(dict(zip(cats["service_code"], cats["target_days"], strict=False))).astype(float)
    seconds = (closed - requested).dt.total_seconds()
    df = pd.DataFrame(
        {
            "district": _district_by_name(r["district"], reference["crosswalk"]),
            "is_closed": closed.notna(),
            "days": seconds / 86400,
            "on_time": closed.notna() & (seconds <= target * 86400),
            # only requests whose category has a target count toward the on-time share
            "has_target": closed.notna() & target.notna(),
        }
    )
    x = _expand(df, requested.dt.tz_convert(TIMEZONE).dt.date)
    # Known-district share is over all requests of the period; districts are 1.0 by construction.
    known = x.assign(known=x["district"].notna()).groupby(GROUP)["known"].mean()
    closed_x = x[x["is_closed"]]
    g = closed_x.groupby(GROUP, as_index=False).agg(
        median=("days", "median"), n=("days", "size"), on_time=("on_time", "sum"), targeted=("has_target", "sum")
    )
    coverage = known.loc[list(zip(g["area_id"], g["period_grain"], g["period_start"], strict=False))].to_numpy()
    t = g["targeted"] > 0
    share = 100 * g["on_time"] / g["targeted"]
    on_time = _rows("svc_311_closed_within_target", g, share, g["on_time"], g["targeted"], coverage)
    return [
        _rows("svc_311_median_days_to_close", g, g["median"], np.full(len(g), np.nan), g["n"], coverage),
        on_time[t.to_numpy()],
    ]


def compute(clean: dict[str, pd.DataFrame], reference: dict[str, pd.DataFrame], start: date, days: int) -> pd.DataFrame:
    """Return the ground-truth indicator table (COLUMNS) for the given clean records.

    `clean` and `reference` have the shapes of `generate.City.clean` / `.reference`; only records in
    [start, start + days) exist, and coverage denominators are clipped to that range.
    """
    cal = _Calendar(reference["population"], start, days)
    parts = [
        *_air(clean, cal),
        *_energy(clean, cal),
        *_waste(clean, reference, cal),
        *_ridership(clean, reference, cal),
        *_collisions(clean, cal),
        *_requests(clean, reference),
    ]
    truth = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    truth["period_start"] = truth["period_start"].map(lambda d: d.isoformat())
    return truth.sort_values(["indicator_id", "area_id", "period_grain", "period_start"], ignore_index=True)[COLUMNS]
