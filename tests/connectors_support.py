"""Helpers for the connector and ingestion tests: a minimal city.yaml around the sources under test,
and readers of what landed in bronze and quarantine."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestration import lake
from orchestration.config import CityConfig, load_config
from orchestration.ingest import IngestResult, ingest

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_DSN = "mysql://root@127.0.0.1:3306/test"

SQUARE = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {"code": "D1", "name": "One"},
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
        }
    ],
}


def city_yaml(root: Path, agencies: dict[str, Any]) -> Path:
    """A city.yaml in `root` with one district and the given agencies; the lake is root/lake."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "districts.geojson").write_text(json.dumps(SQUARE))
    (root / "population.csv").write_text("code,population,year\nD1,1000,2024\n")
    cfg = {
        "city": {"name": "Testville", "timezone": "UTC"},
        "lake": {"root": str(root / "lake")},
        "state_dir": str(root / "state"),
        "districts": {"boundaries": "./districts.geojson", "population": "./population.csv"},
        "agencies": agencies,
    }
    path = root / "city.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def one_source(root: Path, agency: str, name: str, spec: dict[str, Any]) -> tuple[CityConfig, Any]:
    cfg = load_config(city_yaml(root, {agency: {name: spec}}))
    return cfg, cfg.source(f"{agency}/{name}")


def run(cfg: CityConfig, source, batch: str = "run-1") -> IngestResult:
    return ingest(cfg, source, batch)


def bronze_rows(cfg: CityConfig, source, columns: list[str] | None = None) -> list[dict]:
    t = lake.read_table(lake.bronze_uri(cfg, source.agency, source.name), columns=columns)
    rows = t.to_pylist() if t is not None else []
    return sorted(rows, key=lambda r: tuple((r.get(k) is None, r.get(k)) for k in source.primary_key))


def quarantine_rows(cfg: CityConfig, source) -> list[dict]:
    t = lake.read_table(lake.quarantine_uri(cfg, source.agency, source.name))
    return t.to_pylist() if t is not None else []


def version(cfg: CityConfig, source) -> int:
    return lake.open_table(lake.bronze_uri(cfg, source.agency, source.name)).version()


def postgres_table(monkeypatch):
    """A fresh PostgreSQL table name (dropped after); skips when the server is not reachable."""
    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {exc}")
    table = f"t_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("TEST_PG_DSN", PG_DSN)
    yield conn, table
    conn.execute(f"drop table if exists {table} cascade")  # and views over it
    conn.close()


def mysql_table(monkeypatch):
    """A fresh MariaDB table name (dropped after) and an admin connection; skips when the server is not reachable."""
    pymysql = pytest.importorskip("pymysql")
    try:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test", autocommit=True)
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"MariaDB not reachable at 127.0.0.1:3306: {exc}")
    table = f"t_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("TEST_MYSQL_DSN", MYSQL_DSN)
    yield conn, table
    conn.cursor().execute(f"drop table if exists {table}")
    conn.close()
