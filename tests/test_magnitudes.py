"""The reference city reads like a real one: each indicator's monthly value lies where real cities report it,
at every --scale. The ranges and their sources are the table in docs/indicators.md ("Plausible values")."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from orchestration.reference_city import generate

# indicator -> (lowest, highest) plausible value of one month, in the indicator's unit (docs/indicators.md)
PLAUSIBLE = {
    "iso37120_8_1": (2, 75),  # PM2.5, ug/m3
    "iso37120_8_2": (5, 150),  # PM10, ug/m3
    "iso37120_8_4": (5, 100),  # NO2, ug/m3
    "iso37120_8_6": (10, 150),  # O3, ug/m3
    "iso37120_7_1": (50, 600),  # residential kWh per person per month
    "iso37120_7_5": (100, 1500),  # all-sector kWh per person per month
    "iso37120_16_2": (0.015, 0.100),  # tonnes per person per month (15-100 kg)
    "iso37120_16_3": (5, 70),  # percent recycled
    "iso37120_18_3": (3, 60),  # transit trips per person per month
    "iso37120_18_8": (0, 4),  # road deaths per 100 000 per month
    "svc_311_median_days_to_close": (0.1, 30),  # days
    "svc_311_closed_within_target": (30, 100),  # percent
}
# A district's road deaths in one month are a handful at most: 0 or 3 in 40 000 people are both real.
CITY_ONLY = {"iso37120_18_8"}

# scale -> generation: at scale 1 the demo's own city (90 days from 2025-01-01); elsewhere February only.
CASES = {
    0.3: {"days": 28, "start": date(2025, 2, 1)},
    1: {"days": 90, "start": date(2025, 1, 1)},
    10: {"days": 28, "start": date(2025, 2, 1)},
}


@pytest.fixture(scope="module", params=list(CASES), ids=lambda s: f"scale{s:g}")
def generated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[float, Path]:
    scale = request.param
    out = tmp_path_factory.mktemp(f"riverton_{scale:g}")
    generate(out, scale=scale, seed=42, **CASES[scale])
    return scale, out


def plausible(indicator: str, value: float) -> bool:
    low, high = PLAUSIBLE[indicator]
    return low <= value <= high


def february(out: Path) -> pd.DataFrame:
    truth = pd.read_csv(out / "ground_truth.csv", dtype={"area_id": str, "period_start": str})
    return truth[(truth["period_grain"] == "month") & (truth["period_start"] == "2025-02-01")]


def test_every_indicator_of_the_city_is_plausible(generated: tuple[float, Path]) -> None:
    scale, out = generated
    city = february(out).query("area_id == 'CITY'").set_index("indicator_id")["value"]
    assert set(city.index) == set(PLAUSIBLE)
    wrong = {i: round(v, 4) for i, v in city.items() if not plausible(i, v)}
    assert not wrong, f"scale {scale:g}: implausible CITY values for February 2025: {wrong}"


def test_every_districts_indicators_are_plausible(generated: tuple[float, Path]) -> None:
    scale, out = generated
    rows = february(out).query("area_id != 'CITY'")
    assert set(rows["area_id"]) == {f"D0{i}" for i in range(1, 9)}
    wrong = [
        (r.indicator_id, r.area_id, round(r.value, 4))
        for r in rows.itertuples()
        if r.indicator_id not in CITY_ONLY and not plausible(r.indicator_id, r.value)
    ]
    assert not wrong, f"scale {scale:g}: implausible district values for February 2025: {wrong}"


def test_scale_multiplies_the_people_with_the_records(generated: tuple[float, Path]) -> None:
    """population.csv grows with --scale (8 districts of 40 000-120 000 people at scale 1), and the per-capita
    denominators are exactly the census the generator wrote."""
    scale, out = generated
    census = pd.read_csv(out / "population.csv")
    people = census.loc[census["year"] == 2025, "population"].sum()
    assert 8 * 40_000 * 0.95 <= people / scale <= 8 * 120_000 * 1.1
    city = february(out).query("area_id == 'CITY'").set_index("indicator_id")
    assert city.loc["iso37120_7_5", "denominator"] == people
    assert city.loc["iso37120_18_8", "denominator"] == pytest.approx(people / 100_000)
