"""Running citylake day to day: alerts on failure, PostgreSQL instance storage, runs started at once."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.conftest import BIN, REPO, CityRun, citylake, write_city_config

TINY = {"scale": 0.3, "days": 30, "start": date(2025, 2, 1), "seed": 3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> CityRun:
    from orchestration.reference_city import generate

    root = tmp_path_factory.mktemp("ops")
    generate(root / "riverton", **TINY)
    return CityRun(
        root,
        write_city_config(root, root / "riverton", root / "lake", partitioned=False),
        root / "riverton",
        root / "lake",
        root / "state",
    )


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A real HTTP server on loopback that records what is POSTed to it."""
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/citylake", received
    server.shutdown()


def test_a_failed_run_posts_to_the_alert_webhook(tiny: CityRun, webhook, tmp_path: Path) -> None:
    url, received = webhook
    cfg = yaml.safe_load(tiny.config.read_text())
    cfg["alerts"] = {"webhook": url}
    cfg["agencies"]["safety"]["collisions"]["path"] = str(tmp_path / "missing.sqlite")
    broken = tmp_path / "city.yaml"
    broken.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = citylake("run", "--select", "bronze/safety/collisions", config=broken, check=False)
    assert proc.returncode == 1
    assert received, proc.stderr[-2000:]
    alert = received[-1]
    assert alert["city"] == "Riverton" and alert["step"] == "bronze__safety__collisions"
    assert "missing.sqlite" in alert["error"] and alert["run_id"] in proc.stdout


def _pg_admin():
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({exc}); CI has it")


def test_instance_storage_in_postgresql(tiny: CityRun, tmp_path: Path) -> None:
    """The documented production dagster.yaml: runs, events and schedules land in PostgreSQL."""
    admin = _pg_admin()
    db = f"citylake_dagster_{uuid.uuid4().hex[:8]}"
    admin.execute(f"create database {db}")
    try:
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copyfile(REPO / "orchestration" / "instance" / "dagster.postgres.yaml", home / "dagster.yaml")
        env = {
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_URL": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}",
            "CITYLAKE_CONFIG": str(tiny.config),
        }
        proc = subprocess.run(
            [str(BIN / "citylake"), "run", "--select", "bronze/safety/collisions", "--config", str(tiny.config)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **env},
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}") as con:
            runs = con.execute("select status from runs").fetchall()
            materialized = con.execute(
                "select count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION' "
                "and asset_key like '%collisions%'"
            ).fetchone()[0]
            tables = {r[0] for r in con.execute("select tablename from pg_tables where schemaname = 'public'")}
        assert runs == [("SUCCESS",)] and materialized == 1
        assert {"runs", "event_logs", "jobs", "job_ticks"} <= tables  # schedules' storage too
        assert not (home / "history").exists(), "nothing may fall back to SQLite"
    finally:
        admin.execute(f"drop database if exists {db} with (force)")
        admin.close()


def test_two_runs_started_at_once_both_finish_correctly(tiny: CityRun) -> None:
    """Both runs write the same warehouse file and Delta tables: the concurrency pools serialise the
    writing steps, so neither fails on DuckDB's lock and no row is duplicated."""
    from orchestration.reference_city import running_open311

    cfg = yaml.safe_load(tiny.config.read_text())
    cfg.pop("simulators")  # the test serves Open311 for both runs, as a real agency would
    with running_open311(tiny.city_dir / "open311" / "requests.json", port=0) as api:
        cfg["agencies"]["service_requests"]["requests"]["url"] = f"{api.url}/open311/v2/requests.json"
        config = tiny.root / "concurrent.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        env = {**os.environ, "CITYLAKE_CONFIG": str(config)}
        env.pop("DAGSTER_HOME", None)
        procs = [
            subprocess.Popen(
                [str(BIN / "citylake"), "run", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=900) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    with sqlite3.connect(tiny.city_dir / "transport.sqlite") as db:
        source_keys = {f"{s}|{d}" for s, d in db.execute("select stop_id, service_date from daily_ridership")}
    con = duckdb.connect(str(tiny.catalog), read_only=True)
    try:
        assert con.execute("select count(*) from indicators").fetchone()[0] > 50
    finally:
        con.close()
    from deltalake import DeltaTable

    bronze = DeltaTable(str(tiny.lake / "bronze" / "transport" / "ridership")).to_pyarrow_table().to_pylist()
    bronze_keys = [f"{r['stop_id']}|{r['service_date']}" for r in bronze]
    held = DeltaTable(str(tiny.lake / "quarantine" / "transport" / "ridership")).to_pyarrow_table().to_pylist()
    held_keys = {q["record_key"] for q in held if not q["reason"].startswith("duplicate")}
    assert len(bronze_keys) == len(set(bronze_keys)), "a key landed twice"
    assert set(bronze_keys) | held_keys == source_keys and not set(bronze_keys) & held_keys
