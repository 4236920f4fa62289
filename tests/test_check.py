"""`citylake check` finds before any run what the run would fail on: a `columns:`/`district:` value or a
primary key naming a column the source does not have (files, SQLite, PostgreSQL, an HTTP API), named by
its city.yaml key with the source's columns listed; an empty drop folder is a warning, not "ok"; a boundary
file or population table a build cannot read fails it."""

from __future__ import annotations

import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import citylake
from tests.connectors_support import PG_DSN, city_yaml, postgres_table

METERS = {
    "kind": "files",
    "path": "./drop/*.csv",
    "format": "csv",
    "primary_key": ["meter_id", "month"],
    "feeds": "energy_consumption",
    "columns": {"meter_id": "meter_id", "period_start": "\"month\" || '-01'", "kwh": "kwh", "sector": "sector"},
    "district": {"from": "code", "column": "district_code"},
}


def _meters(tmp_path: Path, **changes) -> Path:
    (tmp_path / "drop").mkdir(exist_ok=True)
    (tmp_path / "drop" / "2025-01.csv").write_text(
        "meter_id,month,kwh_total,sector,district_code\nm1,2025-01,12.5,residential,D1\n"
    )
    return city_yaml(tmp_path, {"energy": {"meters": {**METERS, **changes}}})


def _failed(config: Path) -> str:
    proc = citylake("check", config=config, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "would fail a run" in proc.stderr, proc.stderr
    return proc.stdout


def test_a_mapping_to_a_column_the_csv_lacks_fails_check_naming_the_key_and_the_columns(tmp_path: Path) -> None:
    out = _failed(_meters(tmp_path))
    line = next(x for x in out.splitlines() if "agencies.energy.meters.columns.kwh" in x)
    assert "the source has no column 'kwh'" in line
    # every column of the header, the closest to the missing one first
    assert line.endswith("its columns, closest first: kwh_total, month, meter_id, sector, district_code"), line
    assert "FAIL energy/meters" in out

    fixed = _meters(tmp_path, columns={**METERS["columns"], "kwh": "kwh_total"})
    proc = citylake("check", config=fixed)
    assert "ok   energy/meters" in proc.stdout and "every columns:/district: value binds" in proc.stdout


def test_an_expression_over_a_missing_column_fails_check(tmp_path: Path) -> None:
    (tmp_path / "drop").mkdir()
    (tmp_path / "drop" / "c.csv").write_text("collision_id,DATE,killed,injured\nc1,2025-01-02,0,1\n")
    expression = "strptime(DATE || ' ' || TIME, '%Y-%m-%d %H:%M')"
    config = city_yaml(
        tmp_path,
        {
            "police": {
                "crashes": {
                    "kind": "files",
                    "path": "./drop/*.csv",
                    "format": "csv",
                    "primary_key": ["collision_id"],
                    "feeds": "road_collisions",
                    "columns": {"collision_id": "collision_id", "accident_at": expression, "injured": "injured"},
                }
            }
        },
    )
    out = _failed(config)
    assert f"agencies.police.crashes.columns.accident_at: the source has no column 'TIME' (in {expression!r})" in out
    assert "its columns, closest first: DATE, " in out


def test_a_district_column_the_source_lacks_fails_check(tmp_path: Path) -> None:
    out = _failed(
        _meters(
            tmp_path, columns={**METERS["columns"], "kwh": "kwh_total"}, district={"from": "code", "column": "zone"}
        )
    )
    assert "agencies.energy.meters.district.column: the source has no column 'zone'" in out


def test_an_expression_that_does_not_fit_text_columns_fails_check(tmp_path: Path) -> None:
    # a CSV lands as text in bronze: arithmetic on it without a cast fails the staging model
    out = _failed(_meters(tmp_path, columns={**METERS["columns"], "kwh": "kwh_total * 1000"}))
    assert (
        "agencies.energy.meters.columns.kwh: 'kwh_total * 1000' does not fit the source's columns, which are text"
        in out
    )


def test_an_empty_drop_folder_is_a_warning_and_check_exits_0(tmp_path: Path) -> None:
    config = _meters(tmp_path, path="./incoming/*.csv")
    (tmp_path / "incoming").mkdir()
    proc = citylake("check", config=config)
    assert "WARN energy/meters" in proc.stdout
    assert "nothing will load from agencies.energy.meters.path until files arrive" in proc.stdout
    assert "ok   energy/meters" not in proc.stdout and "1 warning(s), no error" in proc.stdout


def test_a_sqlite_source_with_a_bad_mapping_fails_check(tmp_path: Path) -> None:
    db = tmp_path / "transport.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("create table ridership (stop_id text, service_date text, riders integer)")
    config = city_yaml(
        tmp_path,
        {
            "transport": {
                "ridership": {
                    "kind": "sqlite",
                    "path": str(db),
                    "table": "ridership",
                    "primary_key": ["stop_id", "service_date"],
                    "feeds": "transit_ridership",
                    "columns": {"service_date": "service_date", "boardings": "boardings", "stop_id": "stop_id"},
                }
            }
        },
    )
    out = _failed(config)
    assert "agencies.transport.ridership.columns.boardings: the source has no column 'boardings'" in out
    assert "its columns, closest first:" in out and "riders" in out


def test_a_postgres_table_with_a_bad_mapping_fails_check_without_its_dsn(tmp_path: Path, monkeypatch) -> None:
    gen = postgres_table(monkeypatch)
    conn, table = next(gen)
    try:
        conn.execute(f"create table {table} (collision_id text primary key, crash_time text, killed integer)")
        config = city_yaml(
            tmp_path,
            {
                "safety": {
                    "collisions": {
                        "kind": "postgres",
                        "dsn": "${TEST_PG_DSN}",
                        "table": table,
                        "primary_key": ["collision_id"],
                        "feeds": "road_collisions",
                        "columns": {
                            "collision_id": "collision_id",
                            "accident_at": "crash_local_time",
                            "dead_within_30_days": "killed",
                        },
                    }
                }
            },
        )
        proc = citylake("check", config=config, check=False)
    finally:
        next(gen, None)
    assert proc.returncode != 0
    assert "agencies.safety.collisions.columns.accident_at: the source has no column 'crash_local_time'" in proc.stdout
    assert "closest first: crash_time, " in proc.stdout
    assert PG_DSN not in proc.stdout + proc.stderr


class _Api(BaseHTTPRequestHandler):
    records: list[dict] = []

    def do_GET(self) -> None:
        body = json.dumps(self.records).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_api_whose_first_page_lacks_a_mapped_field_fails_check(tmp_path: Path, api: str) -> None:
    _Api.records = [
        {"service_request_id": "sr1", "requested_datetime": "2025-01-01T00:00:00Z", "status": "open"},
        {"service_request_id": "sr2", "requested_datetime": "2025-01-02T00:00:00Z", "status": "closed"},
    ]
    spec = {
        "kind": "http_json",
        "url": f"{api}/requests.json",
        "primary_key": ["service_request_id"],
        "feeds": "service_requests",
        "columns": {"service_request_id": "service_request_id", "requested_at": "requested_date", "status": "status"},
    }
    config = city_yaml(tmp_path, {"svc": {"requests": spec}})
    out = _failed(config)
    assert "agencies.svc.requests.columns.requested_at: the source has no column 'requested_date'" in out
    assert "closest first: requested_datetime, " in out

    spec["columns"]["requested_at"] = "requested_datetime"
    proc = citylake("check", config=city_yaml(tmp_path, {"svc": {"requests": spec}}))
    assert "ok   svc/requests" in proc.stdout


def test_the_reference_city_and_nyc_check_clean(tmp_path: Path) -> None:
    """No false alarm on real mappings: every source of the repository's city.yaml (generated small) and
    of cities/nyc/city.yaml (when its public files are here) binds."""
    from datetime import date

    from orchestration.reference_city import generate
    from tests.conftest import REPO, write_city_config

    generate(tmp_path / "city", scale=0.05, days=30, start=date(2025, 1, 20), seed=11)
    proc = citylake("check", config=write_city_config(tmp_path, tmp_path / "city", tmp_path / "lake"))
    assert proc.stdout.count("every columns:/district: value binds") == 7, proc.stdout
    assert "FAIL" not in proc.stdout and "WARN" not in proc.stdout
    if not (REPO.parent / "shared" / "data" / "nyc").is_dir():
        pytest.skip("the NYC public files are not beside the repository")
    proc = citylake("check", config=REPO / "cities" / "nyc" / "city.yaml")
    assert proc.stdout.count("every columns:/district: value binds") == 13, proc.stdout


def test_a_population_table_or_boundary_file_a_build_cannot_read_fails_check(tmp_path: Path) -> None:
    config = _meters(tmp_path, columns={**METERS["columns"], "kwh": "kwh_total"})
    ok = citylake("check", config=config)
    assert "ok   districts" in ok.stdout and "1 districts (code), population of 1 of them (2024..2024)" in ok.stdout
    (tmp_path / "population.csv").write_text("ward,pop,yr\nD1,1000,2024\n")
    out = _failed(config)
    assert "FAIL districts" in out and "needs columns code, population, year; it has ward, pop, yr" in out
    assert "Error: the districts would fail a run" in citylake("check", config=config, check=False).stderr
    (tmp_path / "population.csv").write_text("code,population,year\nD1,1000,2024\n")
    geo = json.loads((tmp_path / "districts.geojson").read_text())
    geo["features"][0]["properties"] = {"WARD": "D1"}
    (tmp_path / "districts.geojson").write_text(json.dumps(geo))
    out = citylake("check", config=config, check=False).stdout
    assert "FAIL districts" in out and "has no property 'code'; set districts.code_property" in out
