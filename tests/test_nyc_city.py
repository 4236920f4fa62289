"""New York City, the real second city: cities/nyc/city.yaml run end to end through `citylake run`,
every published indicator compared with values computed here, independently, from the raw files.

The expected values are written out in plain pandas and shapely following docs/indicators.md (local
periods, the census year at or before the period, point-in-polygon for the EPA sites, CITY including
records without a district, rows only where records exist); no citylake code is imported for them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml
from shapely.geometry import Point, shape

from tests.conftest import REPO, citylake

NYC_CONFIG = REPO / "cities" / "nyc" / "city.yaml"
DATA = REPO.parent / "shared" / "data" / "nyc"
KEY = ["indicator_id", "area_id", "period_grain", "period_start"]
MEASURES = ["value", "numerator", "denominator"]
BOROUGH_DIGIT = {"manhattan": "1", "bronx": "2", "brooklyn": "3", "queens": "4", "staten island": "5"}
TZ = "America/New_York"


def _needs_data() -> None:
    if not DATA.is_dir():
        pytest.skip(f"the real NYC data is not there ({DATA}): clone the repository with shared/ beside it")


def _absolute(value: str) -> str:
    return str((NYC_CONFIG.parent / value).resolve())


@pytest.fixture(scope="module")
def nyc_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cities/nyc/city.yaml with its lake and state in a temporary folder, run once; the analyst catalog."""
    _needs_data()
    root = tmp_path_factory.mktemp("nyc")
    cfg = yaml.safe_load(NYC_CONFIG.read_text())
    # the copy lives elsewhere, so its relative paths are made absolute against the original's folder
    cfg["districts"]["boundaries"] = _absolute(cfg["districts"]["boundaries"])
    cfg["districts"]["population"] = _absolute(cfg["districts"]["population"])
    cfg["reference_data"] = {k: _absolute(v) for k, v in cfg["reference_data"].items()}
    for sources in cfg["agencies"].values():
        for source in sources.values():
            source["path"] = _absolute(source["path"])
    cfg["lake"]["root"] = str(root / "lake")
    cfg["state_dir"] = str(root / "state")
    config = root / "city.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if not k.startswith("x-")}, sort_keys=False))
    citylake("run", config=config, timeout=900)
    return root / "lake" / "catalog.duckdb"


@pytest.fixture(scope="module")
def published(nyc_catalog: Path) -> pd.DataFrame:
    with duckdb.connect(str(nyc_catalog), read_only=True) as con:
        df = con.sql("select * from indicators").df()
    df["period_start"] = pd.to_datetime(df["period_start"])
    return df


# ---- the independent computation -------------------------------------------------------------------


def _districts() -> list[tuple[str, object]]:
    fc = yaml.safe_load((DATA / "community_district_boundaries.geojson").read_text())  # JSON is YAML
    return sorted((str(f["properties"]["BoroCD"]), shape(f["geometry"])) for f in fc["features"])


def _population() -> pd.DataFrame:
    """code, year, population from the wide census table, plus CITY as the sum over districts."""
    wide = pd.read_csv(DATA / "population_by_community_district_1970-2010.csv", dtype=str)
    wide["code"] = wide["Borough"].str.lower().map(BOROUGH_DIGIT) + wide["CD Number"].str.zfill(2)
    long = wide.melt(id_vars=["code"], value_vars=[c for c in wide if c.endswith(" Population")], var_name="col")
    long["year"] = long["col"].str[:4].astype(int)
    long["population"] = long["value"].astype(float)
    city = long.groupby("year", as_index=False)["population"].sum().assign(code="CITY")
    return pd.concat([long[["code", "year", "population"]], city], ignore_index=True)


def _population_for(pop: pd.DataFrame, area: str, year: int) -> float:
    """The census at or before the year; the earliest census for years before it."""
    census = pop[pop["code"] == area].sort_values("year")
    if census.empty:
        return math.nan
    before = census[census["year"] <= year]
    return float((before if len(before) else census.head(1))["population"].iloc[-1])


def _with_areas_and_periods(df: pd.DataFrame, date_column: str) -> pd.DataFrame:
    """Each record once for its district (when known) and once for CITY, per month and per year."""
    areas = pd.concat(
        [df[df["district"].notna()].assign(area_id=lambda d: d["district"]), df.assign(area_id="CITY")],
        ignore_index=True,
    )
    dates = pd.to_datetime(areas[date_column])
    return pd.concat(
        [
            areas.assign(period_grain="month", period_start=dates.dt.to_period("M").dt.start_time),
            areas.assign(period_grain="year", period_start=dates.dt.to_period("Y").dt.start_time),
        ],
        ignore_index=True,
    )


def _expected_pm25(districts: list[tuple[str, object]]) -> pd.DataFrame:
    raw = pd.read_csv(DATA / "air_quality_epa_aqs_pm25_daily_nyc_sites.csv", dtype=str)
    # a key repeated in the file: the first row is kept (the extract has no instrument column, so the
    # key includes the reading; see cities/nyc/city.yaml)
    raw = raw.drop_duplicates(
        ["County Code", "Site Num", "Sample Duration", "Date Local", "Arithmetic Mean", "1st Max Value"]
    )
    raw["pm25"] = raw["Arithmetic Mean"].astype(float)
    raw = raw[(raw["pm25"] >= 0) & (raw["pm25"] <= 1000)]  # impossible values are held back
    sites = raw[["Latitude", "Longitude"]].drop_duplicates()
    placed = {}
    for lat, lon in sites.itertuples(index=False):
        point = Point(float(lon), float(lat))
        placed[(lat, lon)] = next((code for code, poly in districts if poly.covers(point)), None)
    raw["district"] = [placed[(a, b)] for a, b in zip(raw["Latitude"], raw["Longitude"], strict=True)]
    assert raw["district"].notna().all(), "every EPA site lies in a community district or joint interest area"
    raw["station"] = raw["County Code"] + "-" + raw["Site Num"]
    daily = raw.groupby(["station", "district", "Date Local"], as_index=False)["pm25"].mean()
    periods = _with_areas_and_periods(daily, "Date Local")
    stations = periods.groupby([*KEY[1:], "station"], as_index=False)["pm25"].mean()
    out = stations.groupby(KEY[1:], as_index=False).agg(numerator=("pm25", "sum"), denominator=("pm25", "size"))
    out["value"] = out["numerator"] / out["denominator"]
    return out.assign(indicator_id="iso37120_8_1")


def _expected_waste(codes: set[str], pop: pd.DataFrame) -> pd.DataFrame:
    raw = pd.read_csv(DATA / "dsny_monthly_tonnage_by_cd_1990-2023.csv", dtype=str)
    raw["district"] = raw["BOROUGH"].str.lower().map(BOROUGH_DIGIT) + raw["COMMUNITYDISTRICT"]
    raw = raw[raw["district"].isin(codes)]  # Queens '7A' is no district: held back, counted nowhere
    raw["month"] = pd.to_datetime(raw["MONTH"].str.replace(" / ", "-") + "-01")
    streams = {
        "REFUSETONSCOLLECTED": "refuse",
        "PAPERTONSCOLLECTED": "recycling",
        "MGPTONSCOLLECTED": "recycling",
        "RESORGANICSTONS": "organics",
        "SCHOOLORGANICTONS": "organics",
        "LEAVESORGANICTONS": "organics",
        "XMASTREETONS": "organics",
    }
    long = raw.melt(id_vars=["month", "district"], value_vars=list(streams), var_name="column", value_name="tonnes")
    long["tonnes"] = long["tonnes"].astype(float).fillna(0.0)  # a blank cell: none of that stream collected
    long["recycled"] = long["tonnes"].where(long["column"].map(streams) == "recycling", 0.0)
    periods = _with_areas_and_periods(long, "month")
    g = periods.groupby(KEY[1:], as_index=False).agg(tonnes=("tonnes", "sum"), recycled=("recycled", "sum"))
    g["population"] = [_population_for(pop, a, p.year) for a, p in zip(g["area_id"], g["period_start"], strict=True)]
    per_capita = g.assign(
        indicator_id="iso37120_16_2",
        value=g["tonnes"] / g["population"],
        numerator=g["tonnes"],
        denominator=g["population"],
    )
    share = g[g["tonnes"] > 0]
    share = share.assign(
        indicator_id="iso37120_16_3",
        value=100 * share["recycled"] / share["tonnes"],
        numerator=share["recycled"],
        denominator=share["tonnes"],
    )
    return pd.concat([per_capita, share], ignore_index=True)


def _expected_transit(pop: pd.DataFrame) -> pd.DataFrame:
    raw = pd.read_csv(DATA / "mta_daily_ridership_2020-2024.csv", dtype=str)
    modes = [
        "Subways: Total Estimated Ridership",
        "Buses: Total Estimated Ridership",
        "Staten Island Railway: Total Estimated Ridership",
        "Access-A-Ride: Total Scheduled Trips",
    ]
    raw["boardings"] = sum(raw[m].astype(int) for m in modes)
    periods = _with_areas_and_periods(raw.assign(district=None), "Date")
    g = periods.groupby(KEY[1:], as_index=False)["boardings"].sum()
    g["denominator"] = [_population_for(pop, a, p.year) for a, p in zip(g["area_id"], g["period_start"], strict=True)]
    g["numerator"] = g["boardings"].astype(float)
    g["value"] = g["numerator"] / g["denominator"]
    return g.assign(indicator_id="iso37120_18_3")


def _expected_311(codes: set[str]) -> pd.DataFrame:
    raw = pd.read_csv(DATA / "311_service_requests_animals_2025.csv", dtype=str)
    targets = pd.read_csv(REPO / "cities" / "nyc" / "service_categories.csv").set_index("service_code")["target_days"]

    def to_utc(col: str) -> pd.Series:
        local = pd.to_datetime(raw[col], format="%m/%d/%Y %H:%M")
        return local.dt.tz_localize(TZ, ambiguous="NaT", nonexistent="shift_forward").dt.tz_convert("UTC")

    raw["requested_at"] = to_utc("Created Date")
    raw["closed_at"] = to_utc("Closed Date")
    raw["local_date"] = raw["requested_at"].dt.tz_convert(TZ).dt.tz_localize(None)
    board = raw["Community Board"].fillna("")
    m = board.str.extract(r"^(\d\d) (.+)$")
    raw["district"] = m[1].str.lower().map(BOROUGH_DIGIT) + m[0]
    # a known-format code that is not a district is held back; 'Unspecified ...' has no district
    raw = raw[raw["district"].isna() | raw["district"].isin(codes)]
    raw = raw[~(raw["closed_at"] < raw["requested_at"])]
    raw["is_closed"] = raw["closed_at"].notna()
    raw["days"] = (raw["closed_at"] - raw["requested_at"]).dt.total_seconds() / 86400
    raw["on_time"] = raw["days"] <= raw["Complaint Type"].map(targets)
    # the on-time share is over the closed requests whose category has a target
    raw["targeted"] = raw["Complaint Type"].map(targets).notna()
    closed = _with_areas_and_periods(raw[raw["is_closed"]], "local_date")
    g = closed.groupby(KEY[1:], as_index=False).agg(
        median=("days", "median"), closed=("days", "size"), on_time=("on_time", "sum"), targeted=("targeted", "sum")
    )
    median = g.assign(
        indicator_id="svc_311_median_days_to_close", value=g["median"], numerator=math.nan, denominator=g["closed"]
    )
    share = g[g["targeted"] > 0].assign(
        indicator_id="svc_311_closed_within_target",
        value=lambda d: 100 * d["on_time"] / d["targeted"],
        numerator=lambda d: d["on_time"],
        denominator=lambda d: d["targeted"],
    )
    return pd.concat([median, share], ignore_index=True).assign(denominator=lambda d: d["denominator"].astype(float))


@pytest.fixture(scope="module")
def expected() -> pd.DataFrame:
    _needs_data()
    districts = _districts()
    codes = {code for code, _ in districts}
    pop = _population()
    parts = [_expected_pm25(districts), _expected_waste(codes, pop), _expected_transit(pop), _expected_311(codes)]
    out = pd.concat([p[KEY + MEASURES] for p in parts], ignore_index=True)
    out[MEASURES] = out[MEASURES].astype(float)
    return out


# ---- the tests --------------------------------------------------------------------------------------


def test_nyc_produces_the_indicators_its_data_supports(published: pd.DataFrame) -> None:
    ids = set(published["indicator_id"])
    assert ids == {
        "iso37120_8_1",
        "iso37120_16_2",
        "iso37120_16_3",
        "iso37120_18_3",
        "svc_311_median_days_to_close",
        "svc_311_closed_within_target",
    }
    transit = published[published["indicator_id"] == "iso37120_18_3"]
    assert set(transit["area_id"]) == {"CITY"}, "MTA ridership is citywide: no district rows"


def test_nyc_rows_are_exactly_the_expected_ones(published: pd.DataFrame, expected: pd.DataFrame) -> None:
    got = set(map(tuple, published[KEY].astype(str).to_numpy()))
    want = set(map(tuple, expected[KEY].astype(str).to_numpy()))
    assert not (want - got), f"{len(want - got)} expected rows missing, e.g. {sorted(want - got)[:5]}"
    assert not (got - want), f"{len(got - want)} unexpected rows, e.g. {sorted(got - want)[:5]}"
    assert len(published) == len(got), "an indicator x area x period appears twice"


@pytest.mark.parametrize("measure", MEASURES)
def test_nyc_indicator_values_match_the_raw_files(
    published: pd.DataFrame, expected: pd.DataFrame, measure: str
) -> None:
    both = published.merge(expected, on=KEY, suffixes=("", "_expected"), validate="one_to_one")
    assert len(both) == len(expected)
    bad = [
        (row[KEY].tolist(), row[measure], row[f"{measure}_expected"])
        for _, row in both.iterrows()
        if not _close(row[measure], row[f"{measure}_expected"])
    ]
    assert not bad, f"{len(bad)} of {len(both)} {measure}s differ (pipeline, expected), e.g. {bad[:5]}"


def test_nyc_spot_values(published: pd.DataFrame) -> None:
    """A few figures checked by eye against the files, so a shared mistake in both computations shows."""
    row = published.set_index(KEY).loc
    # 2010 census: New York City 8 175 133 is the Census Bureau's count; the CD table sums to 8 171 680
    assert row[("iso37120_18_3", "CITY", "year", pd.Timestamp("2023-01-01"))]["denominator"] == 8_171_680
    pm = row[("iso37120_8_1", "CITY", "year", pd.Timestamp("2019-01-01"))]
    assert 5 < pm["value"] < 12 and pm["denominator"] >= 5  # NYC's annual PM2.5 is ~7 ug/m3 at 6-8 sites
    share = row[("iso37120_16_3", "CITY", "year", pd.Timestamp("2022-01-01"))]["value"]
    assert 10 < share < 25  # DSNY's curbside diversion (paper + MGP) is in the high teens


def test_nyc_quarantine_holds_the_real_quirks(nyc_catalog: Path) -> None:
    """What the real files hold that must not reach the marts, held back with its reason."""
    with duckdb.connect(str(nyc_catalog), read_only=True) as con:
        held = con.sql("select layer, agency, source_name, reason from quarantine").df()
    conformed = held[held["layer"] == "conformed"]
    assert conformed["reason"].str.contains("unknown district code '47A'").sum() == 6 * 7  # 6 months x 7 streams
    assert conformed["reason"].str.startswith("pm25 out of range").sum() == 35  # negative daily means
    # IS 45's collocated monitors repeat identical rows: the repeats, and nothing else, are duplicates
    duplicates = held[held["reason"].str.startswith("duplicate primary key")]
    assert len(duplicates) == 85 and set(duplicates["source_name"]) == {"pm25_daily"}
    assert len(held) == 42 + 35 + 85


def test_nyc_complaint_addresses_stay_out_of_the_lake(nyc_catalog: Path) -> None:
    """city.yaml drops the 311 `Incident Address`: no exact address (a house number and a street that is not
    also the value of another column, such as Street Name) is in any file or table of the lake."""
    from tests.lake_scan import search

    raw = pd.read_csv(DATA / "311_service_requests_animals_2025.csv", dtype=str)
    elsewhere = set(raw.drop(columns="Incident Address").stack())
    addresses = [a for a in raw["Incident Address"].dropna().unique() if re.match(r"\d", a) and a not in elsewhere]
    assert len(addresses) > 2000
    hits = search([nyc_catalog.parent], addresses)
    assert hits == [], "\n".join(hits[:10])


def _close(a: float, b: float) -> bool:
    if pd.isna(a) or pd.isna(b):
        return pd.isna(a) and pd.isna(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


# ---- districts.population_format (no NYC data needed) ------------------------------------------------


def _wide_city(tmp_path: Path, population_format: dict, table: str) -> Path:
    (tmp_path / "districts.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (tmp_path / "census.csv").write_text(table, encoding="utf-8-sig")
    cfg = {
        "city": {"name": "Wide", "timezone": "UTC"},
        "lake": {"root": "./lake"},
        "districts": {
            "boundaries": "./districts.geojson",
            "population": "./census.csv",
            "population_format": population_format,
        },
        "agencies": {"a": {"s": {"kind": "files", "path": "./*.csv", "format": "csv", "primary_key": ["x"]}}},
    }
    path = tmp_path / "city.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_wide_census_table_is_read_as_code_population_year(tmp_path: Path) -> None:
    from orchestration.config import load_config
    from orchestration.dbt_build import population_rows

    table = 'Boro,CD,2000 Population,2010 Population,Note\nX,1,"1,200",1300,a\nY,2,,900,b\n'
    fmt = {"layout": "wide", "code": "lower(Boro) || CD", "year_columns": r"^(\d{4}) Population$"}
    rows = population_rows(load_config(_wide_city(tmp_path, fmt, table)))
    assert rows == [
        {"code": "x1", "population": 1200, "year": "2000"},
        {"code": "x1", "population": 1300, "year": "2010"},
        {"code": "y2", "population": 900, "year": "2010"},  # no 2000 census of y2: skipped
    ]


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        (
            {"layout": "tall", "code": "c", "year_columns": "(\\d+)"},
            "layout: str 'tall' is not a population layout; use one of wide, long",
        ),
        ({"layout": "long", "code": "c", "year_columns": "(\\d+)"}, "year_columns: unknown key for layout long"),
        ({"layout": "wide", "year_columns": "(\\d+)"}, "population_format.code is missing"),
        ({"layout": "wide", "code": "c", "year_columns": "Population"}, "needs a group capturing the year"),
        ({"layout": "wide", "code": "c", "year_columns": "(", "extra": 1}, "extra: unknown key"),
    ],
)
def test_population_format_errors_name_the_key(tmp_path: Path, fmt: dict, message: str) -> None:
    from orchestration.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(_wide_city(tmp_path, fmt, "code,population,year\n"))


def test_a_long_census_table_is_read_under_its_own_column_names(tmp_path: Path) -> None:
    """`population_format: {layout: long, code, population, year}`: each a column or an expression; the keys
    left out default to the columns code, population and year."""
    from orchestration.config import load_config
    from orchestration.dbt_build import population_rows

    table = 'Ward,Residents,Census,Note\nw1,"1,200",2010,a\nw2,,2010,b\nw1,1300,2020,c\n'
    fmt = {"layout": "long", "code": "upper(Ward)", "population": "Residents", "year": "Census"}
    assert population_rows(load_config(_wide_city(tmp_path, fmt, table))) == [
        {"code": "W1", "population": 1200, "year": "2010"},  # (w2 has no 2010 population: skipped)
        {"code": "W1", "population": 1300, "year": "2020"},
    ]
    defaults = tmp_path / "defaults"
    defaults.mkdir()
    rows = population_rows(load_config(_wide_city(defaults, {"layout": "long", "code": "ward_no"}, _LONG)))
    assert rows == [
        {"code": "T1", "population": 15000, "year": "2024"},
        {"code": "T2", "population": 25000, "year": "2024"},
    ]


_LONG = "ward_no,population,year\nT1,15000,2024\nT2,25000,2024\n"


@pytest.mark.parametrize(
    ("fmt", "table", "message"),
    [
        ({"layout": "long", "population": "residents"}, _LONG, "districts.population_format.code: 'code' cannot be"),
        (
            {"layout": "long", "code": "ward_no", "year": "yr"},
            _LONG,
            "population_format.year: 'yr' cannot be evaluated",
        ),
        ({"layout": "long", "code": "ward_no"}, _LONG.replace(",2024\nT2", ",24\nT2"), "'24' in data row 1"),
        ({"layout": "long", "code": "ward_no"}, _LONG.replace("15000", "many"), "'many' in data row 1 (2024)"),
    ],
)
def test_a_long_census_table_that_cannot_be_read_names_the_key_and_row(
    tmp_path: Path, fmt: dict, table: str, message: str
) -> None:
    from orchestration.config import load_config
    from orchestration.dbt_build import population_rows

    with pytest.raises(ValueError, match=re.escape(message)):
        population_rows(load_config(_wide_city(tmp_path, fmt, table)))


def test_a_code_expression_that_fails_names_the_key(tmp_path: Path) -> None:
    from orchestration.config import load_config
    from orchestration.dbt_build import population_rows

    fmt = {"layout": "wide", "code": "no_such_column", "year_columns": r"^(\d{4})$"}
    cfg = load_config(_wide_city(tmp_path, fmt, "CD,2010\n1,5\n"))
    with pytest.raises(ValueError, match="districts.population_format.code: 'no_such_column' cannot be evaluated"):
        population_rows(cfg)
