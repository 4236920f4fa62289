"""A new source of every kind added to a city.yaml alone (no code change) loads correctly through the
real `citylake run --select 'bronze/<agency>/<source>'` in a subprocess; a second run of all six
adds nothing and commits no Delta version."""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest

from orchestration import lake
from orchestration.config import load_config
from tests.conftest import citylake, free_port
from tests.connectors_support import city_yaml

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _services_up() -> None:
    import psycopg
    import pymysql

    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
        pymysql.connect(host="127.0.0.1", user="root", database="test", connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any driver error means the service is not there
        pytest.skip(f"PostgreSQL or MariaDB not reachable: {exc}")


def test_every_kind_from_city_yaml_alone_loads_twice_through_the_cli(tmp_path, monkeypatch):
    _services_up()
    import psycopg
    import pymysql

    table = f"t_{uuid.uuid4().hex[:10]}"
    ddl = f"create table {table} (id integer primary key, v text, updated_at timestamp)"
    rows = [(i, f"v{i}", f"2025-01-01 00:00:{i:02d}") for i in range(12)]
    pg = psycopg.connect(PG_DSN, autocommit=True)
    my = pymysql.connect(host="127.0.0.1", user="root", database="test", autocommit=True)
    try:
        for conn in (pg, my):
            cur = conn.cursor()
            cur.execute(ddl)
            cur.executemany(f"insert into {table} values (%s, %s, %s)", rows)
        db = tmp_path / "src.sqlite"
        with sqlite3.connect(db) as con:
            con.execute("create table t (id integer primary key, v text)")
            con.executemany("insert into t values (?, ?)", [(i, f"v{i}") for i in range(12)])
        (tmp_path / "drop").mkdir()
        (tmp_path / "drop" / "a.csv").write_text("id,v\n" + "".join(f"{i},v{i}\n" for i in range(12)))
        requests = [
            {
                "service_request_id": f"sr{i}",
                "service_code": "pothole",
                "service_name": "Pothole",
                "status": "open",
                "requested_datetime": "2025-01-01T00:00:00Z",
                "updated_datetime": f"2025-01-01T00:00:{i:02d}Z",
            }
            for i in range(12)
        ]
        (tmp_path / "open311").mkdir()
        (tmp_path / "open311" / "requests.json").write_text(json.dumps(requests))
        landing = tmp_path / "mqtt"
        landing.mkdir()
        (landing / "20250101T000000000000Z-test.jsonl").write_text(
            "".join(
                json.dumps({"topic": "t/a", "received_at": "2025-01-01T00:00:00Z", "payload": {"id": i, "v": f"v{i}"}})
                + "\n"
                for i in range(12)
            )
        )
        port = free_port()
        monkeypatch.setenv("CLI_PG_DSN", PG_DSN)
        monkeypatch.setenv("CLI_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")
        incremental = {"primary_key": ["id"], "cursor": "updated_at", "batch_rows": 5}
        config = city_yaml(
            tmp_path,
            {
                "newagency": {
                    "pg": {"kind": "postgres", "dsn": "${CLI_PG_DSN}", "table": table, **incremental},
                    "my": {"kind": "mysql", "dsn": "${CLI_MYSQL_DSN}", "table": table, **incremental},
                    "lite": {"kind": "sqlite", "path": str(db), "table": "t", "primary_key": ["id"]},
                    "api": {
                        "kind": "http_json",
                        "url": f"http://127.0.0.1:{port}/open311/v2/requests.json",
                        "pagination": {"param": "page", "size_param": "page_size", "size": 5},
                        "cursor": {"field": "updated_datetime", "param": "updated_after"},
                        "primary_key": ["service_request_id"],
                    },
                    "drop": {"kind": "files", "path": "./drop/*.csv", "format": "csv", "primary_key": ["id"]},
                    "air": {"kind": "mqtt", "topic": "t/+", "landing": "./mqtt", "primary_key": ["id"]},
                }
            },
        )
        text = config.read_text() + f"simulators:\n  open311:\n    data: ./open311/requests.json\n    port: {port}\n"
        config.write_text(text)
        cfg = load_config(config)
        names = ["pg", "my", "lite", "api", "drop", "air"]
        versions = {}
        for attempt in (1, 2):
            # first each source alone, as a user adds one; then all six again in one run (cheaper)
            selections = [f"bronze/newagency/{n}" for n in names] if attempt == 1 else ["key:bronze/newagency/*"]
            for selection in selections:
                proc = citylake("run", "--select", selection, config=config)
                assert "succeeded" in proc.stdout, proc.stdout + proc.stderr
                assert f"Running {1 if attempt == 1 else 6} assets" in proc.stdout, proc.stdout
            for name in names:
                dt_ = lake.open_table(lake.bronze_uri(cfg, "newagency", name))
                t = dt_.to_pyarrow_table()
                key = "service_request_id" if name == "api" else "id"
                ids = sorted(str(v) for v in t.column(key).to_pylist())
                expected = sorted(f"sr{i}" if name == "api" else str(i) for i in range(12))
                assert ids == expected, (attempt, name, ids)
                assert t.column("_batch").null_count == 0
                if attempt == 1:
                    versions[name] = dt_.version()
                else:
                    assert dt_.version() == versions[name], f"{name}: a rerun with nothing new made a Delta version"
        assert list(landing.glob("*.jsonl")) == []
        check = citylake("check", config=config)
        assert check.stdout.count("ok  ") == 7 and PG_DSN not in check.stdout  # the districts and 6 sources
    finally:
        for conn in (pg, my):
            conn.cursor().execute(f"drop table if exists {table}")
            conn.close()
