"""Quality gates block bad data from publication, and let good data through again once it is fixed.

One small city goes through four runs of the real `citylake run`:
1. clean: every gate passes and the catalog is published;
2. bronze faults (keys mostly null in a new energy file, the collisions table truncated, a stale air
   feed): the bronze gates fail, nothing downstream runs, the published catalog and Delta marts are
   byte-for-byte what they were, and the offending rows are in quarantine;
3. conformed faults (impossible PM2.5 readings, 311 requests in an unknown district): the intermediate
   gates fail and publication is blocked again;
4. everything fixed: all gates pass and a new version is published.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from pathlib import Path

import duckdb
import pytest
import yaml
from deltalake import DeltaTable

from tests.conftest import CityRun, citylake, write_city_config

SMALL = {"scale": 0.3, "days": 40, "seed": 5}


def failed_checks(proc) -> set[str]:
    return {
        line.split("CHECK FAILED ", 1)[1].split(" ", 1)[0]
        for line in proc.stderr.splitlines()
        if "CHECK FAILED " in line
    }


def published_state(run: CityRun) -> tuple[str, int, str]:
    digest = hashlib.sha256(run.catalog.read_bytes()).hexdigest()
    version = DeltaTable(str(run.lake / "marts" / "indicators")).version()
    con = duckdb.connect(str(run.catalog), read_only=True)
    try:
        run_id = json.loads(con.execute("select value from _published where key = 'run_id'").fetchone()[0])
    finally:
        con.close()
    return digest, version, run_id


def bronze_quarantine(run: CityRun, agency: str, source: str) -> list[dict]:
    return DeltaTable(str(run.lake / "quarantine" / agency / source)).to_pyarrow_table().to_pylist()


def set_config(run: CityRun, change) -> None:
    cfg = yaml.safe_load(run.config.read_text())
    change(cfg)
    run.config.write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> CityRun:
    from datetime import date

    from orchestration.reference_city import generate

    root = tmp_path_factory.mktemp("gates")
    city_dir = root / "riverton"
    generate(city_dir, start=date(2025, 3, 1), **SMALL)
    config = write_city_config(root, city_dir, root / "lake", partitioned=False)
    run = CityRun(root, config, city_dir, root / "lake", root / "state")
    # vendor B must have delivered within the last N hours; N covers the generated history for now
    age = (dt.datetime.now(dt.UTC) - dt.datetime(2025, 3, 1, tzinfo=dt.UTC)).total_seconds() / 3600
    set_config(
        run,
        lambda c: c["agencies"]["environment"]["air_vendor_b"].update(
            freshness={"column": "observed_at", "max_delay_hours": round(age)}
        ),
    )
    return run


def test_gates_block_bad_data_and_pass_it_once_fixed(gated: CityRun) -> None:
    run, city = gated, gated.city_dir

    # 1. clean
    first = citylake("run", config=run.config, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not failed_checks(first)
    clean = published_state(run)

    # 2. bronze faults
    bad_energy = city / "landing" / "energy" / "energy_2025-03-late.csv"
    bad_energy.write_text(
        "meter_id,month,kwh,sector,district_code\n"
        + "".join(f",2025-03,{100 + i},residential,D01\n" for i in range(40))
    )
    with sqlite3.connect(city / "safety.sqlite") as db:
        kept = db.execute("select count(*) from collisions").fetchone()[0]
        saved = db.execute("select * from collisions").fetchall()
        db.execute("delete from collisions where rowid % 5 <> 0")
    set_config(run, lambda c: c["agencies"]["environment"]["air_vendor_b"]["freshness"].update(max_delay_hours=48))
    second = citylake("run", config=run.config, check=False)
    assert second.returncode == 1
    assert failed_checks(second) == {
        "bronze/energy/meter_readings:gx_suite",
        "bronze/safety/collisions:gx_suite",
        "bronze/environment/air_vendor_b:gx_suite",
    }, second.stderr[-3000:]
    assert "not_be_null(meter_id)" in second.stderr and "row_count" in second.stderr
    assert published_state(run) == clean, "a failed gate must leave the published catalog and marts as they were"
    nulls = [q for q in bronze_quarantine(run, "energy", "meter_readings") if "not_be_null(meter_id)" in q["reason"]]
    assert len(nulls) == 40

    # 3. conformed faults (bronze fixed)
    bad_energy.write_text(
        "meter_id,month,kwh,sector,district_code\n"
        + "".join(f"LATE{i:03d},2025-03,{100 + i},residential,D01\n" for i in range(40))
    )
    with sqlite3.connect(city / "safety.sqlite") as db:
        db.execute("delete from collisions")
        db.executemany(f"insert into collisions values ({','.join('?' * len(saved[0]))})", saved)
        assert db.execute("select count(*) from collisions").fetchone()[0] == kept
    fresh = city / "landing" / "air" / "vendor_b" / "fresh.jsonl"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:00Z")
    fresh.write_text(
        json.dumps(
            {
                "station_id": "B-001",
                "observed_at": now,
                "pm25_ugm3": 9.5,
                "pm10_ugm3": 20.0,
                "no2_ugm3": 30.0,
                "o3_ugm3": 40.0,
                "latitude": 38.7,
                "longitude": -90.35,
            }
        )
        + "\n"
    )
    spikes = city / "landing" / "air" / "vendor_a" / "spikes.jsonl"
    readings = [
        json.loads(line)
        for day in [f"03-{d:02d}" for d in range(2, 14)]
        for line in (city / "landing" / "air" / "vendor_a" / f"2025-{day}.jsonl").read_text().splitlines()
        if line.startswith("{") and line.endswith("}")
    ]
    spikes.write_text("".join(json.dumps({**r, "sensor": r["sensor"] + "-X", "pm25": 5000.0}) + "\n" for r in readings))
    requests_path = city / "open311" / "requests.json"
    requests = json.loads(requests_path.read_text())
    atlantis = [
        {**r, "service_request_id": f"ATL{i}", "district": "Atlantis", "updated_datetime": "2025-06-01T12:00:00-05:00"}
        for i, r in enumerate(requests[: len(requests) // 5])
    ]
    requests_path.write_text(json.dumps(requests + atlantis))
    third = citylake("run", config=run.config, check=False)
    assert third.returncode == 1
    assert failed_checks(third) == {
        "intermediate/int_air_quality_observations__districted:gx_suite",
        "intermediate/int_service_requests__categorised:gx_suite",
    }, third.stderr[-3000:]
    assert published_state(run) == clean
    con = duckdb.connect(str(run.warehouse), read_only=True)
    try:
        held = dict(con.execute("select entity, count(*) from quarantine_records group by 1").fetchall())
        atlantis_held = con.execute(
            "select count(*) from quarantine_records where reject_reason like 'unknown district name ''Atlantis''%'"
        ).fetchone()[0]
    finally:
        con.close()
    assert held["air_quality_observations"] >= len(readings) and atlantis_held >= len(atlantis)

    # 4. everything fixed
    spikes.write_text("".join(json.dumps({**r, "sensor": r["sensor"] + "-X"}) + "\n" for r in readings))
    requests_path.write_text(
        json.dumps(
            requests
            + [{**r, "district": "Northgate", "updated_datetime": "2025-06-02T12:00:00-05:00"} for r in atlantis]
        )
    )
    fourth = citylake("run", config=run.config, check=False)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert not failed_checks(fourth)
    digest, version, run_id = published_state(run)
    assert digest != clean[0] and version > clean[1] and run_id != clean[2]


def test_failed_gate_metadata_names_the_expectation(gated: CityRun, monkeypatch) -> None:
    """What an engineer sees in the UI: the failed expectation, the observed values, offending rows, Data Docs."""
    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", str(gated.state / "dagster"))
    key = dg.AssetCheckKey(dg.AssetKey(["bronze", "energy", "meter_readings"]), "gx_suite")
    with dg.DagsterInstance.get() as instance:
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
        evaluations = [r.event.dagster_event.event_specific_data for r in history if r.event]
    failed = [e for e in evaluations if not e.passed]
    assert len(failed) == 1 and len(evaluations) == 4
    details = failed[0].metadata["failed_expectations"].value
    assert details[0]["expectation"] == "expect_column_values_to_not_be_null"
    assert details[0]["kwargs"]["column"] == "meter_id" and details[0]["unexpected_count"] == 40
    assert details[0]["sample"][0]["meter_id"] is None and details[0]["sample"][0]["month"] == "2025-03"
    # the UI links the page on the docs server (citylake docs / dev); the file is beside it in the metadata
    docs, page = failed[0].metadata["data_docs"].value, Path(failed[0].metadata["data_docs_path"].value)
    assert docs.startswith("http://127.0.0.1:") and docs.endswith(f"/data-docs/{page.parent.name}/{page.name}")
    assert "Great Expectations" in page.read_text()
