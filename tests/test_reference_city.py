"""Tests for the reference city generator, its ground truth and its Open311 server."""

from __future__ import annotations

import csv
import json
import sqlite3
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from orchestration.reference_city import generate, running_open311
from orchestration.reference_city.generate import build
from orchestration.reference_city.ground_truth import compute

SMALL = {"scale": 0.3, "days": 40, "start": date(2025, 1, 1), "seed": 7}


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("riverton")
    generate(out, **SMALL)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(city_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    again.mkdir()
    (again / "landing" / "energy").mkdir(parents=True)
    (again / "landing" / "energy" / "energy_1999-01.csv").write_text("stale")  # must be cleaned away
    generate(again, **SMALL)
    first, second = _files(city_dir), _files(again)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first), [k for k in first if first[k] != second[k]]
    assert any(k.endswith(".xlsx") for k in first) and "transport.sqlite" in first


def test_other_seed_differs(city_dir: Path, tmp_path: Path) -> None:
    generate(tmp_path, **{**SMALL, "seed": 8})
    assert (tmp_path / "safety.sqlite").read_bytes() != (city_dir / "safety.sqlite").read_bytes()


def test_scale_changes_volume(tmp_path: Path) -> None:
    small = generate(tmp_path / "s", scale=0.5, days=14)
    large = generate(tmp_path / "l", scale=1.5, days=14)
    for source, counts in small["sources"].items():
        assert large["sources"][source]["clean"] > 2 * counts["clean"], source


def test_files_have_the_documented_shape(city_dir: Path) -> None:
    geo = json.loads((city_dir / "districts.geojson").read_text())
    assert [f["properties"]["code"] for f in geo["features"]] == [f"D0{i}" for i in range(1, 9)]
    with sqlite3.connect(city_dir / "transport.sqlite") as con:
        zones = {z for (z,) in con.execute("SELECT zone_code FROM stops")}
        assert zones == {f"TZ-N{i}" for i in range(1, 5)} | {f"TZ-S{i}" for i in range(1, 5)} | {"TZ-XX"}
    requests = json.loads((city_dir / "open311" / "requests.json").read_text())
    assert requests[0]["requested_datetime"][-6:] == "-06:00"
    assert (city_dir / "landing" / "waste" / "waste_2025-01-06.xlsx").exists()  # first Monday on/after start
    assert sorted(p.name for p in (city_dir / "landing" / "energy").iterdir()) == [
        "energy_2025-01.csv",
        "energy_2025-02.csv",
    ]


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_open311_paginates_and_filters(city_dir: Path) -> None:
    path = city_dir / "open311" / "requests.json"
    everything = json.loads(path.read_text())
    expected = sorted(
        everything,
        key=lambda r: (pd.Timestamp(r["updated_datetime"]), r["service_request_id"]),
    )
    with running_open311(path, port=0) as server:
        base = f"{server.url}/open311/v2"
        pages, page = [], 1
        while True:
            status, body = _get(f"{base}/requests.json?page={page}&page_size=100")
            assert status == 200
            if not body:
                break
            pages += body
            page += 1
        assert pages == expected and page == len(expected) // 100 + 2

        cutoff = expected[len(expected) // 2]["updated_datetime"]
        status, body = _get(f"{base}/requests.json?page_size=5000&updated_after={urllib.parse.quote(cutoff)}")
        assert body == [r for r in expected if pd.Timestamp(r["updated_datetime"]) > pd.Timestamp(cutoff)]

        status, services = _get(f"{base}/services.json")
        assert status == 200 and len(services) == 6
        status, _ = _get(f"{server.url}/nope")
        assert status == 404


def _jsonl_lines(directory: Path) -> list[str]:
    return [line for p in sorted(directory.glob("*.jsonl")) for line in p.read_text().splitlines()]


def test_bad_records_are_present_in_the_files(city_dir: Path) -> None:
    manifest = pd.read_csv(city_dir / "bad_records.csv", dtype=str)
    assert set(manifest["source"]) == {
        "transport/ridership",
        "safety/collisions",
        "service_requests/requests",
        "energy/meter_readings",
        "waste/collections",
        "environment/air_vendor_a",
        "environment/air_vendor_b",
    }
    assert not manifest.duplicated(["source", "record_key"]).any()

    with sqlite3.connect(city_dir / "transport.sqlite") as con:
        rides = pd.read_sql("SELECT * FROM daily_ridership", con)
    with sqlite3.connect(city_dir / "safety.sqlite") as con:
        collisions = pd.read_sql("SELECT * FROM collisions", con)
    requests = pd.DataFrame(json.loads((city_dir / "open311" / "requests.json").read_text()))
    energy = pd.concat(
        pd.read_csv(p, dtype=str, keep_default_na=False) for p in (city_dir / "landing" / "energy").glob("*.csv")
    )
    waste = []
    for p in (city_dir / "landing" / "waste").glob("*.xlsx"):
        for route, _, stream, week, _ in openpyxl.load_workbook(p)["collections"].iter_rows(
            min_row=2, values_only=True
        ):
            waste.append(f"{route}|{stream}|{week.date().isoformat()}")
    air_a = _jsonl_lines(city_dir / "landing" / "air" / "vendor_a")
    air_b = _jsonl_lines(city_dir / "landing" / "air" / "vendor_b")
    keys = {
        "transport/ridership": (rides["stop_id"] + "|" + rides["service_date"]).tolist(),
        "safety/collisions": collisions["collision_id"].tolist(),
        "service_requests/requests": requests["service_request_id"].tolist(),
        "energy/meter_readings": (energy["meter_id"] + "|" + energy["month"]).tolist(),
        "waste/collections": waste,
        "environment/air_vendor_a": [f"{r['sensor']}|{r['ts']}" for r in _parsed(air_a)],
        "environment/air_vendor_b": [f"{r['station_id']}|{r['observed_at']}" for r in _parsed(air_b)],
    }
    for row in manifest.itertuples():
        if row.kind == "malformed" and row.source == "environment/air_vendor_a":
            name, line = row.record_key.split(":")
            text = (city_dir / "landing" / "air" / "vendor_a" / name).read_text().splitlines()[int(line) - 1]
            with pytest.raises(json.JSONDecodeError):
                json.loads(text)
            continue
        count = keys[row.source].count(row.record_key)
        assert count == (2 if row.kind == "duplicate" else 1), row

    assert (rides["boardings"] < 0).sum() == (manifest["detail"] == "negative boardings").sum()
    by_311 = manifest[manifest["source"] == "service_requests/requests"]
    assert (requests["district"] == "Atlantis").sum() == (by_311["kind"] == "unknown_district").sum()
    assert (energy["kwh"] == "n/a").any() and (energy["district_code"] == "D99").any()
    assert any('"pm25_ugm3":"n/a"' in line for line in air_b)


def _parsed(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def test_fall_back_day_has_unique_local_timestamps(tmp_path: Path) -> None:
    generate(tmp_path, scale=0.1, days=3, start=date(2025, 11, 1))
    # Distinct lines: the deliberate exact duplicates are the only repeats allowed.
    rows = _parsed(sorted(set(_jsonl_lines(tmp_path / "landing" / "air" / "vendor_a"))))
    keys = [(r["sensor"], r["ts"]) for r in rows]
    assert len(keys) == len(set(keys))
    per_sensor = pd.Series([s for s, ts in keys if ts.startswith("2025-11-02")]).value_counts()
    assert per_sensor.max() <= 96  # the 25-hour day loses its repeated hour


@pytest.fixture(scope="module")
def city():
    return build(**SMALL)


@pytest.fixture(scope="module")
def truth(city) -> pd.DataFrame:
    return compute(city.clean, city.reference, city.start, city.days)


def test_ground_truth_file_matches_compute(city_dir: Path, truth: pd.DataFrame) -> None:
    on_disk = pd.read_csv(city_dir / "ground_truth.csv")
    assert len(on_disk) == len(truth)
    pd.testing.assert_series_equal(on_disk["value"], truth["value"], check_names=False)


def test_ground_truth_covers_indicators_areas_and_periods(truth: pd.DataFrame) -> None:
    assert set(truth["indicator_id"]) == {
        "iso37120_8_1",
        "iso37120_8_2",
        "iso37120_8_4",
        "iso37120_8_6",
        "iso37120_7_1",
        "iso37120_7_5",
        "iso37120_16_2",
        "iso37120_16_3",
        "iso37120_18_3",
        "iso37120_18_8",
        "svc_311_median_days_to_close",
        "svc_311_closed_within_target",
    }
    assert set(truth["area_id"]) == {f"D0{i}" for i in range(1, 9)} | {"CITY"}
    months = truth[truth["period_grain"] == "month"]["period_start"]
    assert set(months) == {"2025-01-01", "2025-02-01"}
    assert set(truth[truth["period_grain"] == "year"]["period_start"]) == {"2025-01-01"}
    assert truth["coverage"].between(0, 1).all()
    assert truth.loc[truth["indicator_id"] == "svc_311_median_days_to_close", "numerator"].isna().all()


def _one(truth: pd.DataFrame, indicator: str, area: str, grain: str, start: str) -> pd.Series:
    rows = truth[
        (truth["indicator_id"] == indicator)
        & (truth["area_id"] == area)
        & (truth["period_grain"] == grain)
        & (truth["period_start"] == start)
    ]
    assert len(rows) == 1
    return rows.iloc[0]


def test_hand_checked_energy_per_capita(city, truth: pd.DataFrame) -> None:
    energy = city.clean["energy"]
    population = city.reference["population"]
    people = population[population["year"] == 2025]["population"].sum()  # 2025 census applies to 2025
    kwh = energy[energy["month"] == "2025-01"]["kwh"].astype(float).sum()
    row = _one(truth, "iso37120_7_5", "CITY", "month", "2025-01-01")
    assert row["numerator"] == pytest.approx(kwh)
    assert row["value"] == pytest.approx(kwh / people)


def test_hand_checked_311_median_for_old_town(city, truth: pd.DataFrame) -> None:
    reqs = city.clean["requests"]
    old_town = {"old town", "old-town", "oldtown", "d03"}
    names = reqs["district"].fillna("").str.strip().str.split().str.join(" ").str.lower()
    # The timestamps carry the local offset, so their date prefix is the local date.
    january = reqs["requested_datetime"].str.startswith("2025-01")
    closed = reqs[names.isin(old_town) & january & reqs["closed_datetime"].notna()]
    durations = [
        (pd.Timestamp(c) - pd.Timestamp(r)).total_seconds() / 86400
        for r, c in zip(closed["requested_datetime"], closed["closed_datetime"], strict=False)
    ]
    row = _one(truth, "svc_311_median_days_to_close", "D03", "month", "2025-01-01")
    assert row["denominator"] == len(durations)
    assert row["value"] == pytest.approx(pd.Series(durations).median())
    assert row["coverage"] == 1.0


def test_hand_checked_fatalities_and_city_coverage(city, truth: pd.DataFrame) -> None:
    collisions = city.clean["collisions"]
    killed = collisions[collisions["crash_local_time"].str.startswith("2025-02")]["killed"].sum()
    population = city.reference["population"]
    people = population[population["year"] == 2025]["population"].sum()
    row = _one(truth, "iso37120_18_8", "CITY", "month", "2025-02-01")
    assert row["numerator"] == killed
    assert row["denominator"] == pytest.approx(people / 100_000)
    assert row["coverage"] == 1.0


def test_crosswalk_lists_every_311_spelling(city_dir: Path, city) -> None:
    with open(city_dir / "district_crosswalk.csv") as fh:
        aliases = {" ".join(r["alias"].split()).lower() for r in csv.DictReader(fh)}
    spelled = city.clean["requests"]["district"].dropna()
    assert {" ".join(s.split()).lower() for s in spelled} <= aliases


def test_a_city_of_two_days_generates_with_its_ground_truth(tmp_path):
    """Two days hold no weekly waste collection: the ground truth still computes (it crashed on the empty table)."""
    from orchestration.reference_city import generate

    generate(tmp_path / "tiny", scale=0.1, days=2)
    truth = (tmp_path / "tiny" / "ground_truth.csv").read_text().splitlines()
    assert truth[0].startswith("indicator_id") and len(truth) > 10
    assert not any(line.startswith("iso37120_16_") for line in truth)
