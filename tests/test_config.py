"""city.yaml validation: every error names the key and says what to do."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from orchestration.config import ConfigError, load_config, read_yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMA_FILE = REPO / "docs" / "city.schema.json"


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


# --- the typed model (orchestration/city_schema.py): unknown keys and wrong types -------------------

#: one source of every kind, valid as written, added beside the base city's sqlite source
SOURCES_OF_EVERY_KIND = {
    "trips": {"kind": "postgres", "dsn": "${TRIPS_DSN}", "table": "trips", "primary_key": ["id"]},
    "spaces": {"kind": "mysql", "dsn": "${SPACES_DSN}", "query": "select * from spaces", "primary_key": ["id"]},
    "requests": {
        "kind": "http_json",
        "url": "http://127.0.0.1:8311/requests.json",
        "pagination": {"param": "page", "size": 100},
        "cursor": {"field": "updated", "param": "updated_after"},
        "primary_key": ["id"],
        "personal_data": {"drop": ["phone"], "hash": ["email"]},
        "allowed_origins": ["https://cdn.example.org"],
    },
    "meters": {"kind": "files", "path": "./drop/*.csv", "format": "csv", "delimiter": ";", "primary_key": ["id"]},
    "air": {"kind": "mqtt", "topic": "city/air/+", "qos": 1, "primary_key": ["sensor", "ts"]},
}


@pytest.fixture
def every_kind(base: dict) -> dict:
    base["agencies"]["other"] = copy.deepcopy(SOURCES_OF_EVERY_KIND)
    base["sinks"] = {"postgres": {"dsn": "${PG_DSN}"}}
    base["alerts"] = {"webhook": "https://hooks.example.org/x"}
    base["deduplicate"] = {"transit_ridership": {"match": ["service_date"]}}
    return base


def test_a_config_with_a_source_of_every_kind_loads(tmp_path: Path, every_kind: dict) -> None:
    cfg = load_config(write(tmp_path, every_kind))
    assert {s.kind for s in cfg.sources} == {"sqlite", "postgres", "mysql", "http_json", "files", "mqtt"}


def _at(data: dict, path: str) -> dict:
    for key in path.split(".") if path else []:
        data = data[key]
    return data


@pytest.mark.parametrize(
    ("block", "key", "message"),
    [
        ("", "citty", "city.yaml: citty: unknown key; did you mean city?"),
        ("", "agency", "city.yaml: agency: unknown key; did you mean agencies?"),
        ("city", "timezon", "city.timezon: unknown key; did you mean timezone?"),
        ("lake", "catalogue", "lake.catalogue: unknown key; use root"),
        ("districts", "code_propery", "districts.code_propery: unknown key; did you mean code_property?"),
        (
            "agencies.transport.ridership",
            "batch_row",
            "agencies.transport.ridership.batch_row: unknown key; did you mean batch_rows?",
        ),
        ("agencies.other.trips", "tabel", "agencies.other.trips.tabel: unknown key; did you mean table?"),
        ("agencies.other.spaces", "querry", "agencies.other.spaces.querry: unknown key; did you mean query?"),
        ("agencies.other.requests", "timeout", "agencies.other.requests.timeout: unknown key; did you mean timeout_s?"),
        ("agencies.other.meters", "delimeter", "agencies.other.meters.delimeter: unknown key; did you mean delimiter?"),
        ("agencies.other.air", "qso", "agencies.other.air.qso: unknown key; did you mean qos?"),
        # a key of another kind: a files source has no cursor, an sqlite source no url
        ("agencies.other.meters", "cursor", "agencies.other.meters.cursor: unknown key; use columns, delimiter"),
        ("agencies.transport.ridership", "url", "agencies.transport.ridership.url: unknown key; use batch_rows"),
        ("agencies.other.requests.personal_data", "hsh", "requests.personal_data.hsh: unknown key; did you mean hash?"),
        ("agencies.other.requests.pagination", "sise", "requests.pagination.sise: unknown key; did you mean size?"),
        ("agencies.other.requests.cursor", "fields", "requests.cursor.fields: unknown key; did you mean field?"),
        (
            "deduplicate.transit_ridership",
            "prefers",
            "deduplicate.transit_ridership.prefers: unknown key; did you mean prefer?",
        ),
        ("sinks", "postgress", "sinks.postgress: unknown key; did you mean postgres?"),
        ("sinks.postgres", "shema", "sinks.postgres.shema: unknown key; did you mean schema?"),
        ("alerts", "webhok", "alerts.webhok: unknown key; did you mean webhook?"),
    ],
)
def test_an_unknown_key_is_refused_naming_its_path_and_the_closest_key(
    tmp_path: Path, every_kind: dict, block: str, key: str, message: str
) -> None:
    """Every level of city.yaml takes only the keys the model names; a typo was silently ignored before."""
    _at(every_kind, block)[key] = _at(every_kind, block).get(key.rstrip("s"), "x")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, every_kind))
    assert message in str(err.value)


def test_a_misspelt_personal_data_block_is_refused_not_ignored(tmp_path: Path, base: dict) -> None:
    """Issue 13: `personal_date:` passed `citylake check` and the columns it meant to drop reached bronze."""
    base["agencies"]["service_requests"] = {
        "requests": {
            "kind": "http_json",
            "url": "http://127.0.0.1:8311/open311/v2/requests.json",
            "primary_key": ["service_request_id"],
            "personal_date": {"drop": ["first_name", "last_name", "phone", "address"], "hash": ["email"]},
        }
    }
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, base))
    assert str(err.value) == (
        "agencies.service_requests.requests.personal_date: unknown key; did you mean personal_data?"
    )


def test_a_misspelt_required_key_is_named_as_missing_with_the_typo(tmp_path: Path, base: dict) -> None:
    source = base["agencies"]["transport"]["ridership"]
    source["primery_key"] = source.pop("primary_key")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, base))
    assert str(err.value).startswith(
        "agencies.transport.ridership.primary_key is missing; did you mean it instead of primery_key?"
    )


@pytest.mark.parametrize(
    ("block", "key", "value", "message"),
    [
        ("lake", "root", ["./lake"], "lake.root: text, got list ['./lake']"),
        ("agencies.other.requests", "cursor", "updated", "agencies.other.requests.cursor must be a mapping"),
        (
            "agencies.other.requests.pagination",
            "style",
            "pages",
            "pagination.style: str 'pages' is not a pagination style; use one of page, offset, next",
        ),
        (
            "agencies.other.requests",
            "allowed_origins",
            "https://cdn.example.org",
            "requests.allowed_origins: a list of text values, e.g. [a, b], got str",
        ),
        ("agencies.other.requests", "timeout_s", "30s", "requests.timeout_s: a number from 0.001 to 3 600, got str"),
        ("agencies.other.meters", "header", "yes", "agencies.other.meters.header: true or false, got str 'yes'"),
        ("agencies.other.meters", "format", "tsv", "meters.format: str 'tsv' is not a file format; use one of csv"),
        ("agencies.other.air", "qos", 3, "agencies.other.air.qos: a whole number from 0 to 2, got int 3"),
        ("agencies.other.air", "kind", "amqp", "agencies.other.air.kind: str 'amqp' is not a source kind"),
        ("agencies.transport.ridership", "volume", {"max_drop": "half"}, "volume.max_drop: a number from 0 to 1"),
        ("agencies.transport.ridership", "primary_key", {"id": 1}, "ridership.primary_key: a column name or a list"),
        ("simulators", "open311", {"data": "./r.json", "port": "8311"}, "simulators.open311.port: a whole number"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key_and_the_type_expected(
    tmp_path: Path, every_kind: dict, block: str, key: str, value, message: str
) -> None:
    every_kind.setdefault("simulators", {})
    _at(every_kind, block)[key] = value
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, every_kind))
    assert message in str(err.value)


def test_top_level_x_blocks_hold_yaml_anchors_and_are_ignored(tmp_path: Path, base: dict) -> None:
    """`x-<name>:` at the top is a place for anchors (cities/nyc/city.yaml's x-dsny); nowhere else."""
    text = yaml.safe_dump(base).replace(
        "agencies:\n", "x-common: &common {kind: sqlite, path: ./t.sqlite}\nagencies:\n"
    )
    text = text.replace("      kind: sqlite\n", "      <<: *common\n")
    (tmp_path / "city.yaml").write_text(text)
    assert load_config(tmp_path / "city.yaml").source("transport/ridership").kind == "sqlite"
    base["agencies"]["transport"]["ridership"]["x-note"] = "a comment"
    with pytest.raises(ConfigError, match="agencies.transport.ridership.x-note: unknown key"):
        load_config(write(tmp_path, base))


def test_a_source_reads_its_defaults_from_the_model(tmp_path: Path, every_kind: dict) -> None:
    cfg = load_config(write(tmp_path, every_kind))
    assert cfg.source("transport/ridership").get("batch_rows") == 50_000
    assert cfg.source("other/requests").get("timeout_s") == 30
    assert cfg.source("other/meters").get("delimiter") == ";"  # as written
    assert cfg.source("other/meters").get("header") is True
    assert cfg.source("other/air").get("url") == "mqtt://127.0.0.1:1883"
    assert cfg.source("other/air").get("volume") == {"max_drop": 0.5}
    assert cfg.source("other/air").get("records_path", "none") == "none"  # no such key for mqtt


@pytest.mark.parametrize("config", ["cities/riverton/city.yaml", "cities/nyc/city.yaml"])
def test_every_config_in_the_repository_fits_the_model_and_the_published_schema(config: str) -> None:
    import jsonschema

    from orchestration.city_schema import problems

    data = read_yaml(REPO / config)
    assert problems(data) == ([], [])
    # what an editor checks: YAML dates are strings to it
    as_json = json.loads(json.dumps(data, default=str))
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(as_json)
    first = (REPO / config).read_text().splitlines()[0]
    assert (
        first.startswith("# yaml-language-server: $schema=")
        and ((REPO / config).parent / first.split("=", 1)[1]).resolve() == SCHEMA_FILE
    )


def test_the_nyc_config_loads() -> None:
    """(The repository's city.yaml loads in test_reference_city_config_is_valid, once its city is generated.)"""
    assert len(load_config(REPO / "cities" / "nyc" / "city.yaml").sources) == 13


def test_the_published_schema_flags_what_the_loader_refuses() -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    data = json.loads(json.dumps(read_yaml(REPO / "cities" / "nyc" / "city.yaml"), default=str))
    data["agencies"]["nyc311"]["animal_complaints"]["personal_date"] = data["agencies"]["nyc311"][
        "animal_complaints"
    ].pop("personal_data")
    errors = [e.message for e in validator.iter_errors(data)]
    assert any("personal_date" in m for m in errors), errors


def test_the_committed_json_schema_is_up_to_date() -> None:
    from orchestration.city_schema import json_schema

    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), (
        "docs/city.schema.json is stale: run .venv/bin/python -m orchestration.city_schema > docs/city.schema.json"
    )
