"""city.yaml validation: every error names the key and says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestration.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def base(tmp_path: Path) -> dict:
    (tmp_path / "d.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (tmp_path / "p.csv").write_text("code,population,year\n")
    return {
        "city": {"name": "Testville", "timezone": "Europe/Paris"},
        "lake": {"root": "./lake"},
        "districts": {"boundaries": "./d.geojson", "population": "./p.csv"},
        "agencies": {
            "transport": {
                "ridership": {
                    "kind": "sqlite",
                    "path": "./t.sqlite",
                    "table": "rides",
                    "primary_key": ["id"],
                    "feeds": "transit_ridership",
                    "columns": {"service_date": "day", "boardings": "n"},
                }
            }
        },
    }


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "city.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_reference_city_config_is_valid(city_run) -> None:
    """The reference city's city.yaml (pointed at a generated city) validates and declares every generated source."""
    from orchestration.reference_city.generate import SOURCES

    cfg = load_config(city_run.config)
    # every source the generator writes is declared, and nothing else
    assert {s.key for s in cfg.sources} == set(SOURCES.values())
    assert cfg.source("environment/air_vendor_a").units == {"no2": "ppb", "o3": "ppb"}


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, base: dict) -> None:
    cfg = load_config(write(tmp_path, base))
    assert cfg.lake_root == str(tmp_path / "lake")
    assert cfg.catalog_path == tmp_path / "lake" / "catalog.duckdb"
    assert cfg.source("transport/ridership").timezone == "Europe/Paris"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["city"].pop("timezone"), "city.timezone is missing"),
        (lambda d: d["city"].update(timezone="Mars/Olympus"), "not an IANA time zone"),
        (lambda d: d["agencies"]["transport"]["ridership"].update(kind="oracle"), "agencies.transport.ridership.kind"),
        (lambda d: d["agencies"]["transport"]["ridership"].pop("primary_key"), "primary_key is missing"),
        (lambda d: d["agencies"]["transport"]["ridership"].update(feeds="parking"), "not a conformed entity"),
        (lambda d: d["agencies"]["transport"]["ridership"]["columns"].pop("boardings"), "needs boardings"),
        (lambda d: d["agencies"]["transport"]["ridership"]["columns"].update(speed="x"), "has no column 'speed'"),
        (lambda d: d["agencies"]["transport"]["ridership"].update(units={"kwh": "BTU"}), "units.kwh"),
        (lambda d: d["agencies"]["transport"]["ridership"].update(district={"from": "zip"}), "district.from"),
        (lambda d: d["lake"].update(root="s3://bucket/city"), "catalog is missing"),
        (lambda d: d["districts"].update(population="./nope.csv"), "districts.population"),
        (lambda d: d["agencies"]["transport"]["ridership"].pop("table"), "set table:"),
    ],
)
def test_errors_name_the_key_and_the_fix(tmp_path: Path, base: dict, change, message: str) -> None:
    change(base)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(write(tmp_path, base))


def test_missing_env_var_is_named_without_a_value(tmp_path: Path, base: dict, monkeypatch) -> None:
    base["agencies"]["transport"]["ridership"] = {
        "kind": "postgres",
        "dsn": "${CITYLAKE_TEST_DSN}",
        "table": "x",
        "primary_key": ["id"],
    }
    cfg = load_config(write(tmp_path, base))
    monkeypatch.delenv("CITYLAKE_TEST_DSN", raising=False)
    with pytest.raises(ConfigError, match="CITYLAKE_TEST_DSN is not set"):
        cfg.source("transport/ridership").secret("dsn")
    monkeypatch.setenv("CITYLAKE_TEST_DSN", "postgresql://u:s3cret@h/db")
    assert cfg.source("transport/ridership").secret("dsn").endswith("s3cret@h/db")


def test_missing_config_file_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="citylake generate"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"parking": {"match": ["x"]}}, "deduplicate.parking: 'parking' is not a conformed entity"),
        ({"transit_ridership": {"match": []}}, "deduplicate.transit_ridership.match is missing"),
        ({"transit_ridership": {"match": ["speed"]}}, "transit_ridership has no column 'speed'"),
        ({"transit_ridership": {"match": ["stop_id"]}}, "agencies.transport.ridership does not map 'stop_id'"),
        (
            {"transit_ridership": {"match": ["service_date"], "prefer": ["transport/buses"]}},
            "'transport/buses' is not a source in agencies",
        ),
        (
            {"transit_ridership": {"match": ["service_date"], "prefer": ["safety/collisions"]}},
            "safety/collisions feeds road_collisions, not transit_ridership",
        ),
        ({"transit_ridership": {"match": ["service_date"], "keep": "first"}}, "transit_ridership.keep: unknown key"),
    ],
)
def test_deduplicate_errors_name_the_key_and_the_fix(tmp_path: Path, base: dict, rule: dict, message: str) -> None:
    """`deduplicate:` is checked up front: entity, columns and sources must exist and fit."""
    base["agencies"]["safety"] = {
        "collisions": {
            "kind": "sqlite",
            "path": "./s.sqlite",
            "table": "collisions",
            "primary_key": ["id"],
            "feeds": "road_collisions",
            "columns": {"collision_id": "id", "accident_at": "at"},
        }
    }
    base["deduplicate"] = rule
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(write(tmp_path, base))
    # the same city with a rule that fits loads, with the rule as written
    base["deduplicate"] = {"road_collisions": {"match": ["accident_at"], "prefer": ["safety/collisions"]}}
    rule = load_config(write(tmp_path, base)).deduplicate["road_collisions"]
    assert (rule.match, rule.prefer) == (("accident_at",), ("safety/collisions",))


@pytest.mark.parametrize(
    ("partitions", "message"),
    [
        ({"start": "March 2025"}, "partitions.start: 'March 2025' is not a date"),
        ({"start": "2999-01-01"}, "partitions.start: 2999-01-01 is in the future"),
        ({"begin": "2025-01-01"}, "partitions.begin: unknown key"),
        ("2025-01-01", "partitions must be a mapping"),
    ],
)
def test_partitions_errors_name_the_key(tmp_path: Path, base: dict, partitions, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, {**base, "partitions": partitions}))


def test_partitions_start_defaults_and_parses(tmp_path: Path, base: dict) -> None:
    from datetime import date

    # no partitions: key: not partitioned; an empty block starts at 2000-01-01
    assert load_config(write(tmp_path, base)).partitions_start is None
    assert load_config(write(tmp_path, {**base, "partitions": {}})).partitions_start == date(2000, 1, 1)
    assert load_config(write(tmp_path, {**base, "partitions": {"start": "2024-02-29"}})).partitions_start == date(
        2024, 2, 29
    )
