"""Path (c), the common alternative: the same indicators computed with pandas from the raw agency files.

Written the way a competent pandas engineer would: vectorised, each source read once with its natural
reader (pd.read_json for JSON lines, falling back to line by line only for a file holding a broken line;
sqlite3 through pd.read_sql; openpyxl for XLSX), the same quarantine rules as the pipeline and
docs/indicators.md's counting rules.

    python -m benchmarks.pandas_path CITY_DIR OUT.parquet
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import io
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd

TZ = "America/Chicago"
GROUP = ["area_id", "period_grain", "period_start"]
AIR = {"pm25": "iso37120_8_1", "pm10": "iso37120_8_2", "no2": "iso37120_8_4", "o3": "iso37120_8_6"}
COLUMNS = ["indicator_id", "area_id", "period_grain", "period_start", "value", "numerator", "denominator", "coverage"]


# ------------------------------------------------------------------------------------------------ helpers


def norm(s: pd.Series) -> pd.Series:
    """Alias matching key: trimmed, inner whitespace collapsed, lower case."""
    return s.astype("string").str.strip().str.replace(r"\s+", " ", regex=True).str.lower()


def blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype("string").str.strip() == "")


def number(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(values as float, True where a value was given but cannot be read)."""
    v = pd.to_numeric(s, errors="coerce").astype(float)
    return v, v.isna() & ~blank(s)


def in_range(v: pd.Series, lo: float | None, hi: float | None) -> pd.Series:
    ok = pd.Series(True, index=v.index)
    if lo is not None:
        ok &= ~(v < lo)
    if hi is not None:
        ok &= ~(v > hi)
    return ok


class City:
    """Reference data: districts (polygons), aliases, population, categories, streams."""

    def __init__(self, root: Path) -> None:
        self.root = root
        fc = json.loads((root / "districts.geojson").read_text())
        self.polygons = [
            (str(f["properties"]["code"]), f["geometry"]["coordinates"])
            for f in fc["features"]
            if f["geometry"]["type"] == "Polygon"
        ]
        self.codes = sorted(c for c, _ in self.polygons)
        names = {str(f["properties"]["code"]): str(f["properties"]["name"]) for f in fc["features"]}
        cw = pd.read_csv(root / "district_crosswalk.csv", dtype=str)
        aliases = pd.concat(
            [
                cw.rename(columns={"alias": "a", "district_code": "c"}),
                pd.DataFrame({"a": list(names.values()), "c": list(names)}),
                pd.DataFrame({"a": list(names), "c": list(names)}),
            ]
        ).dropna(subset=["a"])
        self.aliases = dict(zip(norm(aliases["a"]), aliases["c"], strict=False))
        pop = pd.read_csv(root / "population.csv", dtype={"code": str})
        city = pop.groupby("year", as_index=False)["population"].sum().assign(code="CITY")
        self.population = pd.concat([pop, city], ignore_index=True)
        cats = pd.read_csv(root / "service_categories.csv", dtype=str)
        self.targets = dict(zip(cats["service_code"], cats["target_days"].astype(float), strict=False))
        ws = pd.read_csv(root / "waste_streams.csv", dtype=str)
        self.streams = dict(zip(norm(ws["source_label"]), ws["stream"], strict=False))

    def by_code(self, s: pd.Series) -> tuple[pd.Series, pd.Series]:
        """(district, rejected) for a column of district codes; blank means no district."""
        given = s.where(~blank(s))
        known = {c.upper(): c for c in self.codes}
        d = given.astype("string").str.strip().str.upper().map(known)
        return d.astype(object).where(d.notna(), None), given.notna() & d.isna()

    def by_name(self, s: pd.Series) -> tuple[pd.Series, pd.Series]:
        given = s.where(~blank(s))
        d = norm(given).map(self.aliases)
        return d.astype(object).where(d.notna(), None), given.notna() & d.isna()

    def by_point(self, lat: pd.Series, lon: pd.Series) -> tuple[pd.Series, pd.Series]:
        """Ray casting over each district's rings, on the distinct points; lowest code wins."""
        pts = pd.DataFrame({"lat": lat, "lon": lon}).dropna().drop_duplicates()
        y, x = pts["lat"].to_numpy(), pts["lon"].to_numpy()
        code = np.full(len(pts), None, dtype=object)
        for c, rings in sorted(self.polygons, reverse=True):
            inside = np.zeros(len(pts), bool)
            for ring in rings:
                r = np.asarray(ring, float)
                for (x1, y1), (x2, y2) in zip(r[:-1], r[1:], strict=True):
                    if y1 == y2:
                        continue
                    cross = ((y1 > y) != (y2 > y)) & (x < (x2 - x1) * (y - y1) / (y2 - y1) + x1)
                    inside ^= cross
            code[inside] = c
        lookup = pd.Series(code, index=pd.MultiIndex.from_arrays([pts["lat"], pts["lon"]]))
        d = pd.Series(lookup.reindex(pd.MultiIndex.from_arrays([lat, lon])).to_numpy(), index=lat.index)
        d = d.astype(object).where(d.notna(), None)
        return d, lat.notna() & lon.notna() & d.isna()

    def people(self, g: pd.DataFrame) -> np.ndarray:
        """Population of each row's area for the census at or before its period's year."""
        years = np.sort(self.population["year"].unique())
        py = pd.to_datetime(g["period_start"]).dt.year.to_numpy()
        census = years[np.maximum(np.searchsorted(years, py, side="right") - 1, 0)]
        key = pd.MultiIndex.from_arrays([g["area_id"].to_numpy(), census])
        pop = self.population.set_index(["code", "year"])["population"]
        return pop.reindex(key).to_numpy(float)


def periods(df: pd.DataFrame, day: str = "local_date") -> pd.DataFrame:
    """Each row once for its district (when known) and for CITY, once per grain, with period_start."""
    d = pd.to_datetime(df[day])
    month = df.assign(period_grain="month", period_start=d.dt.to_period("M").dt.start_time)
    year = df.assign(period_grain="year", period_start=d.dt.to_period("Y").dt.start_time)
    both = pd.concat([month, year], ignore_index=True)
    known = both[both["district"].notna()].assign(area_id=lambda x: x["district"])
    return pd.concat([known, both.assign(area_id="CITY")], ignore_index=True)


def slots(first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
    """Days, ISO Mondays and months of each period within [first, last]."""
    days = pd.date_range(first, last, freq="D")
    cal = pd.DataFrame({"d": days})
    out = []
    for grain, freq in (("month", "M"), ("year", "Y")):
        c = cal.assign(period_grain=grain, period_start=cal["d"].dt.to_period(freq).dt.start_time)
        out.append(
            c.groupby(["period_grain", "period_start"], as_index=False).agg(
                days=("d", "size"),
                mondays=("d", lambda s: int((s.dt.day_of_week == 0).sum())),
                months=("d", lambda s: s.dt.to_period("M").nunique()),
            )
        )
    return pd.concat(out, ignore_index=True)


def rows(indicator: str, g: pd.DataFrame, value, numerator, denominator, coverage) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "indicator_id": indicator,
            "area_id": g["area_id"].to_numpy(),
            "period_grain": g["period_grain"].to_numpy(),
            "period_start": pd.to_datetime(g["period_start"]).dt.date.to_numpy(),
            "value": np.asarray(value, float),
            "numerator": np.asarray(numerator, float),
            "denominator": np.asarray(denominator, float),
            "coverage": np.asarray(coverage, float),
        }
    )


def first_per_key(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """A key repeated is kept once (the first)."""
    return df[~df.duplicated(subset=keys, keep="first")]


# ------------------------------------------------------------------------------------------------ readers


def read_jsonl(path: str, columns: list[str]) -> pd.DataFrame:
    """A JSON-lines file as text columns; a file with a broken line is re-read line by line, skipping it."""
    try:
        df = pd.read_json(path, lines=True, dtype=False)
    except ValueError:
        good = []
        with open(path, encoding="utf-8-sig") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    good.append(line)
        df = pd.read_json(io.StringIO("".join(good)), lines=True, dtype=False)
    return df.reindex(columns=columns)


def read_sqlite(path: Path, sql: str) -> pd.DataFrame:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        return pd.read_sql(sql, con)


def read_xlsx(pattern: str) -> pd.DataFrame:
    from openpyxl import load_workbook

    frames = []
    for path in sorted(glob.glob(pattern)):
        wb = load_workbook(path, read_only=True, data_only=True)
        try:
            it = wb.worksheets[0].iter_rows(values_only=True)
            header = [str(h) for h in next(it, ())]
            body = [r for r in it if any(v is not None for v in r)]
        finally:
            wb.close()
        frames.append(pd.DataFrame(body, columns=header))
    df = pd.concat(frames, ignore_index=True)
    ws = df["week_start"]
    df["week_start"] = ws.map(lambda v: v.date() if isinstance(v, dt.datetime) and v.time() == dt.time(0) else v)
    return df


# ------------------------------------------------------------------------------------------------ entities


def air(city: City) -> list[pd.DataFrame]:
    frames = []
    a_cols = ["sensor", "ts", "pm25", "pm10", "no2_ppb", "o3_ppb", "lat", "lon"]
    b_cols = ["station_id", "observed_at", "pm25_ugm3", "pm10_ugm3", "no2_ugm3", "o3_ugm3", "latitude", "longitude"]
    for vendor, cols, factors in (("vendor_a", a_cols, (1, 1, 1.88, 1.96)), ("vendor_b", b_cols, (1, 1, 1, 1))):
        for path in sorted(glob.glob(str(city.root / "landing" / "air" / vendor / "*.jsonl"))):
            raw = first_per_key(read_jsonl(path, cols), cols[:2])
            df = pd.DataFrame({"station_id": raw[cols[0]], "ts": raw[cols[1]]})
            bad = blank(df["station_id"]) | blank(df["ts"])
            for name, col, factor in zip(
                ("pm25", "pm10", "no2", "o3", "lat", "lon"), cols[2:], (*factors, 1, 1), strict=True
            ):
                v, unreadable = number(raw[col])
                df[name] = v * factor if factor != 1 else v
                bad |= unreadable
            if vendor == "vendor_a":  # local wall time, the city's own zone
                local = pd.to_datetime(df["ts"], errors="coerce", format="%Y-%m-%d %H:%M:%S")
            else:  # UTC instants
                utc = pd.to_datetime(df["ts"], errors="coerce", utc=True, format="ISO8601")
                local = utc.dt.tz_convert(TZ).dt.tz_localize(None)
            df["local_date"] = local.dt.normalize()
            bad |= df["local_date"].isna()
            for name, hi in (("pm25", 1000), ("pm10", 2000), ("no2", 2000), ("o3", 2000)):
                bad |= ~in_range(df[name], 0, hi)
            bad |= ~in_range(df["lat"], -90, 90) | ~in_range(df["lon"], -180, 180)
            frames.append(df[~bad].drop(columns="ts"))
    obs = pd.concat(frames, ignore_index=True)
    obs["district"], outside = city.by_point(obs["lat"], obs["lon"])
    obs = obs[~outside]
    span = slots(obs["local_date"].min(), obs["local_date"].max())
    out = []
    daily_all = obs.groupby(["station_id", "local_date"], as_index=False).agg(
        district=("district", "first"), **{p: (p, "mean") for p in AIR}
    )
    for pollutant, indicator in AIR.items():
        daily = daily_all.dropna(subset=[pollutant])
        x = periods(daily)
        st = x.groupby([*GROUP, "station_id"], as_index=False).agg(mean=(pollutant, "mean"), n=(pollutant, "size"))
        g = st.groupby(GROUP, as_index=False).agg(num=("mean", "sum"), den=("station_id", "size"), n=("n", "sum"))
        g = g.merge(span, on=["period_grain", "period_start"])
        out.append(rows(indicator, g, g["num"] / g["den"], g["num"], g["den"], g["n"] / (g["den"] * g["days"])))
    return out


def energy(city: City) -> list[pd.DataFrame]:
    files = sorted(glob.glob(str(city.root / "landing" / "energy" / "*.csv")))
    raw = pd.concat(
        [pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""]) for f in files], ignore_index=True
    )
    raw = first_per_key(raw, ["meter_id", "month"])
    period = pd.to_datetime(raw["month"] + "-01", errors="coerce", format="%Y-%m-%d")
    kwh, unreadable = number(raw["kwh"])
    district, unknown = city.by_code(raw["district_code"])
    ok = ~blank(raw["meter_id"]) & period.notna() & kwh.notna() & (kwh >= 0) & ~unknown & ~unreadable
    e = pd.DataFrame(
        {
            "meter_id": raw["meter_id"],
            "local_date": period.dt.to_period("M").dt.start_time,
            "kwh": kwh,
            "sector": raw["sector"].str.strip().str.lower(),
            "district": district,
        }
    )[ok]
    first, last = e["local_date"].min(), e["local_date"].max() + pd.DateOffset(months=1) - pd.Timedelta(days=1)
    span = slots(first, last)
    out = []
    for indicator, part in (("iso37120_7_1", e[e["sector"] == "residential"]), ("iso37120_7_5", e)):
        g = (
            periods(part)
            .groupby(GROUP, as_index=False)
            .agg(kwh=("kwh", "sum"), n=("kwh", "size"), meters=("meter_id", "nunique"))
            .merge(span, on=["period_grain", "period_start"])
        )
        pop = city.people(g)
        out.append(rows(indicator, g, g["kwh"] / pop, g["kwh"], pop, g["n"] / (g["meters"] * g["months"])))
    return out


def waste(city: City) -> list[pd.DataFrame]:
    raw = first_per_key(
        read_xlsx(str(city.root / "landing" / "waste" / "*.xlsx")), ["route_id", "stream", "week_start"]
    )
    day = pd.to_datetime(raw["week_start"].astype(str), errors="coerce", format="%Y-%m-%d")
    tonnes, unreadable = number(raw["tonnes"])
    district, unknown = city.by_code(raw["district_code"])
    stream = norm(raw["stream"]).map(city.streams)
    ok = day.notna() & ~blank(raw["stream"]) & tonnes.notna() & (tonnes >= 0) & ~unreadable & ~unknown
    ok &= stream.notna()
    w = pd.DataFrame(
        {"local_date": day, "stream": stream, "tonnes": tonnes, "route_id": raw["route_id"], "district": district}
    )[ok]
    w["recycled"] = w["tonnes"].where(w["stream"] == "recycling", 0.0)
    w["route_stream"] = w["route_id"].astype(str) + "|" + w["stream"]
    span = slots(w["local_date"].min(), w["local_date"].max())
    g = (
        periods(w)
        .groupby(GROUP, as_index=False)
        .agg(
            total=("tonnes", "sum"),
            recycled=("recycled", "sum"),
            n=("tonnes", "size"),
            pairs=("route_stream", "nunique"),
        )
        .merge(span, on=["period_grain", "period_start"])
    )
    pop = city.people(g)
    coverage = g["n"] / (g["pairs"] * g["mondays"])
    pos = g["total"] > 0
    return [
        rows("iso37120_16_2", g, g["total"] / pop, g["total"], pop, coverage),
        rows(
            "iso37120_16_3",
            g[pos],
            100 * g["recycled"][pos] / g["total"][pos],
            g["recycled"][pos],
            g["total"][pos],
            coverage[pos],
        ),
    ]


def ridership(city: City) -> list[pd.DataFrame]:
    raw = read_sqlite(
        city.root / "transport.sqlite",
        "select r.stop_id, r.service_date, r.boardings, s.zone_code, s.lat, s.lon "
        "from daily_ridership r left join stops s on s.stop_id = r.stop_id",
    )
    raw = first_per_key(raw, ["stop_id", "service_date"])
    day = pd.to_datetime(raw["service_date"], errors="coerce", format="%Y-%m-%d")
    boardings = pd.to_numeric(raw["boardings"], errors="coerce")
    district, unknown = city.by_name(raw["zone_code"])
    lat, lon = pd.to_numeric(raw["lat"], errors="coerce"), pd.to_numeric(raw["lon"], errors="coerce")
    ok = day.notna() & boardings.notna() & (boardings >= 0) & ~unknown
    ok &= in_range(lat, -90, 90) & in_range(lon, -180, 180)
    r = pd.DataFrame({"local_date": day, "stop_id": raw["stop_id"], "boardings": boardings, "district": district})[ok]
    r["stop_day"] = r["stop_id"].astype(str) + "|" + r["local_date"].astype(str)
    span = slots(r["local_date"].min(), r["local_date"].max())
    g = (
        periods(r)
        .groupby(GROUP, as_index=False)
        .agg(num=("boardings", "sum"), stop_days=("stop_day", "nunique"), stops=("stop_id", "nunique"))
        .merge(span, on=["period_grain", "period_start"])
    )
    pop = city.people(g)
    return [rows("iso37120_18_3", g, g["num"] / pop, g["num"], pop, g["stop_days"] / (g["stops"] * g["days"]))]


def collisions(city: City) -> list[pd.DataFrame]:
    raw = first_per_key(read_sqlite(city.root / "safety.sqlite", "select * from collisions"), ["collision_id"])
    local = pd.to_datetime(raw["crash_local_time"], errors="coerce", format="mixed")
    killed, k_bad = number(raw["killed"])
    injured, i_bad = number(raw["injured"])
    lat, lon = raw["latitude"].astype(float), raw["longitude"].astype(float)
    district, outside = city.by_point(lat, lon)
    ok = ~blank(raw["collision_id"]) & local.notna() & ~k_bad & ~i_bad & ~outside
    ok &= in_range(killed, 0, 1000) & in_range(injured, 0, 10000) & in_range(lat, -90, 90) & in_range(lon, -180, 180)
    c = pd.DataFrame({"local_date": local.dt.normalize(), "killed": killed.fillna(0), "district": district})[ok]
    c["placed"] = c["district"].notna()
    g = (
        periods(c)
        .groupby(GROUP, as_index=False)
        .agg(killed=("killed", "sum"), n=("killed", "size"), placed=("placed", "sum"))
    )
    per_100k = city.people(g) / 100_000
    return [rows("iso37120_18_8", g, g["killed"] / per_100k, g["killed"], per_100k, g["placed"] / g["n"])]


def requests(city: City) -> list[pd.DataFrame]:
    raw = pd.read_json(city.root / "open311" / "requests.json", dtype=False)
    raw = first_per_key(raw, ["service_request_id"])
    requested = pd.to_datetime(raw["requested_datetime"], errors="coerce", utc=True, format="ISO8601")
    closed = pd.to_datetime(raw["closed_datetime"], errors="coerce", utc=True, format="ISO8601")
    lat, lat_bad = number(raw["lat"])
    lon, lon_bad = number(raw["long"])
    district, unknown = city.by_name(raw["district"])
    ok = ~blank(raw["service_request_id"]) & requested.notna() & ~(closed.isna() & ~blank(raw["closed_datetime"]))
    ok &= ~lat_bad & ~lon_bad & in_range(lat, -90, 90) & in_range(lon, -180, 180) & ~unknown
    ok &= ~(closed < requested).fillna(False)
    target = raw["service_code"].map(city.targets)
    days = (closed - requested).dt.total_seconds() / 86400
    r = pd.DataFrame(
        {
            "local_date": requested.dt.tz_convert(TZ).dt.tz_localize(None).dt.normalize(),
            "is_closed": closed.notna(),
            "days": days,
            "on_time": closed.notna() & (days <= target),
            "district": district,
        }
    )[ok]
    r["placed"] = r["district"].notna()
    x = periods(r)
    allreq = x.groupby(GROUP, as_index=False).agg(requests=("placed", "size"), placed=("placed", "sum"))
    g = (
        x[x["is_closed"]]
        .groupby(GROUP, as_index=False)
        .agg(median=("days", "median"), n=("days", "size"), on_time=("on_time", "sum"))
        .merge(allreq, on=GROUP)
    )
    coverage = g["placed"] / g["requests"]
    return [
        rows("svc_311_median_days_to_close", g, g["median"], np.full(len(g), np.nan), g["n"], coverage),
        rows("svc_311_closed_within_target", g, 100 * g["on_time"] / g["n"], g["on_time"], g["n"], coverage),
    ]


def run(root: Path, out: Path) -> dict[str, float]:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    city = City(root)
    parts = []
    for fn in (air, energy, waste, ridership, collisions, requests):
        t = time.perf_counter()
        parts += fn(city)
        timings[f"{fn.__name__}_s"] = time.perf_counter() - t
    result = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    result = result[result["value"].notna()].sort_values(COLUMNS[:4], ignore_index=True)[COLUMNS]
    result.to_parquet(out, index=False)
    timings["total_s"] = time.perf_counter() - t0
    return timings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("city", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args()
    timings = run(args.city, args.out)
    print(" ".join(f"{k}={v:.2f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
