"""city.yaml's loader fuzzed with hypothesis: random documents, a valid config with wrong values at its
keys (every type at every known key, random unicode, huge numbers, deleted and renamed keys), and the
valid config's text with random edits. load_config either returns a CityConfig or raises ConfigError
whose message starts with the key (or the file) it is about; never another exception, never a hang."""

from __future__ import annotations

import copy
import datetime as dt
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestration.city_schema import CityFile
from orchestration.config import CityConfig, ConfigError, load_config, valid_name

#: every top-level key city.yaml has (read from the typed model, so a new key is fuzzed too)
TOP_KEYS = tuple(CityFile.model_fields)
FUZZ = settings(
    max_examples=400,
    deadline=2000,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: a valid city with a source of every kind and every optional key set, so each can be broken
BASE: dict[str, Any] = {
    "city": {"name": "Fuzzville", "timezone": "Europe/Lisbon"},
    "lake": {"root": "./lake"},
    "state_dir": "./state",
    "districts": {
        "boundaries": "./d.geojson",
        "population": "./p.csv",
        "code_property": "code",
        "name_property": "name",
        "population_format": {"layout": "wide", "code": "lower(Boro) || CD", "year_columns": r"^(\d{4}) Pop$"},
    },
    "reference_data": {"service_categories": "./categories.csv"},
    "simulators": {"open311": {"data": "./requests.json", "port": 8311}},
    "alerts": {"webhook": "https://hooks.example.org/citylake"},
    "sinks": {"postgres": {"dsn": "${PG_DSN}", "schema": "citylake", "reader_role": "reader"}},
    "agencies": {
        "energy": {
            "meters": {
                "kind": "files",
                "path": "./landing/energy/*.csv",
                "format": "csv",
                "delimiter": ";",
                "encoding": "latin-1",
                "header": True,
                "primary_key": ["meter_id", "month"],
                "schedule": "0 6 2 * *",
                "sensor_interval_s": 60,
                "feeds": "energy_consumption",
                "columns": {"meter_id": "meter_id", "period_start": "\"month\" || '-01'", "kwh": "kwh"},
                "district": {"from": "code", "column": "district_code"},
                "freshness": {"column": "month", "max_delay_hours": 800},
                "volume": {"max_drop": 0.5},
            }
        },
        "environment": {
            "air": {
                "kind": "files",
                "path": "./landing/air/**/*.jsonl",
                "format": "jsonl",
                "primary_key": ["sensor", "ts"],
                "timezone": "UTC",
                "feeds": "air_quality_observations",
                "columns": {"station_id": "sensor", "observed_at": "ts", "no2": "no2_ppb"},
                "units": {"no2": "ppb"},
                "district": {"from": "coordinates", "lat": "lat", "lon": "lon"},
            },
            "stream": {
                "kind": "mqtt",
                "url": "mqtt://127.0.0.1:1883",
                "topic": "city/air/+",
                "qos": 1,
                "client_id": "citylake-fuzz",
                "landing": "./landing/mqtt",
                "primary_key": ["sensor", "ts"],
            },
        },
        "transport": {
            "rides": {
                "kind": "sqlite",
                "path": "./t.sqlite",
                "table": "main.daily_ridership",
                "cursor": "updated_at",
                "batch_rows": 10_000,
                "primary_key": ["stop_id", "service_date"],
            },
            "trips": {
                "kind": "postgres",
                "dsn": "${TRANSPORT_DSN}",
                "query": "select * from trips where 'a;b' <> ''",
                "primary_key": ["trip_id"],
            },
        },
        "service_requests": {
            "requests": {
                "kind": "http_json",
                "url": "http://127.0.0.1:8311/requests.json",
                "pagination": {"param": "page", "size_param": "page_size", "size": 1000, "start": 1},
                "cursor": {"field": "updated_datetime", "param": "updated_after"},
                "headers": {"Authorization": "Bearer ${TOKEN}"},
                "records_path": "data.items",
                "timeout_s": 30,
                "max_retries": 5,
                "backoff_s": 0.5,
                "primary_key": ["service_request_id"],
            }
        },
    },
}


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested mapping (lists are leaves)."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    return out


PATHS = _paths(BASE)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.dates(min_value=dt.date(1, 1, 1)),
    st.sampled_from(["", "..", "../../etc/passwd", "${NOPE}", "{{ x }}", "a\x00b", "x" * 300, "; drop table x"]),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "d.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (root / "p.csv").write_text("Boro,CD,2010 Pop\n")
    (root / "categories.csv").write_text("service_code,service_name,category,target_days\n")
    return root


class Hang(Exception):
    pass


def _check(folder: Path, text: str) -> None:
    """The property: a CityConfig, or a ConfigError naming a key or the file; within 10 seconds."""
    path = folder / "city.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")

    def alarm(*_):
        raise Hang("load_config took more than 10 s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(10)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith((*TOP_KEYS, "city.yaml", str(path.resolve()))), message
        return
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert isinstance(cfg, CityConfig) and cfg.sources
    for s in cfg.sources:
        assert valid_name(s.agency) and valid_name(s.name) and all(isinstance(k, str) for k in s.primary_key)


def test_the_base_config_is_valid(folder):
    cfg = load_config(_write(folder, BASE))
    assert len(cfg.sources) == 6 and cfg.population_format["layout"] == "wide"


def _write(folder: Path, data: Any) -> Path:
    path = folder / "city.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@FUZZ
@given(st.dictionaries(st.sampled_from(TOP_KEYS) | st.text(max_size=10), values, max_size=8))
def test_random_documents(folder, document):
    _check(folder, yaml.safe_dump(document, allow_unicode=True))


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(PATHS),
            st.sampled_from(["replace", "delete", "rename", "add"]),
            values,
            st.text(max_size=70),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_a_valid_config_with_wrong_values_at_its_keys(folder, mutations):
    data = copy.deepcopy(BASE)
    for path, action, value, name in mutations:
        parent = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue
        if action == "replace":
            parent[path[-1]] = value
        elif action == "delete":
            del parent[path[-1]]
        elif action == "rename":
            parent[name] = parent.pop(path[-1])
        else:
            parent[name] = value
    _check(folder, yaml.safe_dump(data, allow_unicode=True))


BASE_TEXT = yaml.safe_dump(BASE, allow_unicode=True)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(BASE_TEXT)),
            st.integers(min_value=0, max_value=8),
            st.text(max_size=8) | st.sampled_from(["&a ", "*a", "<<: *a", "!!binary ", "{", "[", "'", '"', "\t", ": "]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_the_valid_config_text_with_random_edits(folder, edits):
    text = BASE_TEXT
    for at, cut, insert in edits:
        text = text[:at] + insert + text[at + cut :]
    _check(folder, text)
