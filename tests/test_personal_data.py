"""Personal data never reaches the lake. Riverton's Open311 API serves who reported each request (names,
email, phone, the exact address); the reference city's city.yaml drops all but the email, which lands only as
its keyed hash. The session's city run (what users run) is searched everywhere (every row of every
Parquet file of bronze, quarantine and marts, every table of the published catalog and the warehouse,
the Dagster storage and every other file) for every planted value, read from the generated API data.
The same source loaded without the rule puts them in bronze and quarantine: the search can fail."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
from pathlib import Path

import pytest
import yaml

from orchestration import lake
from orchestration.config import ConfigError, load_config
from orchestration.connectivity import check_source
from orchestration.ingest import ingest
from orchestration.privacy import WITHHELD
from orchestration.reference_city import running_open311
from tests.conftest import CityRun
from tests.connectors_support import bronze_rows, one_source, quarantine_rows, run
from tests.lake_scan import search

PERSONAL = ("first_name", "last_name", "email", "phone", "address")
DROPPED = ("first_name", "last_name", "phone", "address")


def _requests(city_dir: Path) -> list[dict]:
    return json.loads((city_dir / "open311" / "requests.json").read_text())


def planted(city_dir: Path) -> list[str]:
    """Every requester value the API serves, plus the street names on their own (a partial leak)."""
    values = [r[f] for r in _requests(city_dir) for f in PERSONAL if r.get(f)]
    streets = [re.sub(r"^\d+ ", "", r["address"]).rsplit(",", 1)[0] for r in _requests(city_dir) if r.get("address")]
    return values + streets


def _hmac(value: str) -> str:
    return hmac.new(os.environ["CITYLAKE_PII_KEY"].encode(), value.encode(), hashlib.sha256).hexdigest()


def test_no_planted_requester_value_anywhere_in_the_lake_or_the_state(city_run: CityRun) -> None:
    values = planted(city_run.city_dir)
    assert len(set(values)) > 300, "the generator planted requester data"
    hits = search([city_run.lake, city_run.state], values)
    assert hits == [], "\n".join(hits[:20])
    # the search covered the published tables analysts read, quarantine included
    import duckdb

    with duckdb.connect(str(city_run.catalog), read_only=True) as con:
        tables = {r[0] for r in con.sql("select table_name from information_schema.tables").fetchall()}
        ((requests_in_quarantine,),) = con.sql(
            "select count(*) from quarantine where source_name = 'requests' and layer = 'bronze'"
        ).fetchall()
    assert {"quarantine", "quarantine_summary", "mart_service_requests", "indicators"} <= tables
    assert requests_in_quarantine > 0, "bronze rejects of the 311 source (duplicates) are published, cleaned"


def test_bronze_keeps_the_email_only_as_its_keyed_hash(city_run: CityRun) -> None:
    cfg = load_config(city_run.config)
    bronze = lake.read_table(lake.bronze_uri(cfg, "service_requests", "requests"))
    assert not set(DROPPED) & set(bronze.column_names)
    by_id = {r["service_request_id"]: r["email"] for r in bronze.select(["service_request_id", "email"]).to_pylist()}
    given = {r["service_request_id"]: r["email"] for r in _requests(city_run.city_dir)}
    known = next(i for i, e in given.items() if e and i in by_id)
    assert by_id[known] == _hmac(given[known]) and given[known] not in by_id.values()
    # every landed email is a hash of the one the API gave for that request; anonymous ones stay null
    for rid, value in by_id.items():
        assert value == (_hmac(given[rid]) if given[rid] else None), rid
    assert sum(v is not None for v in by_id.values()) > 100


def test_the_same_source_without_the_rule_lands_them_in_bronze_and_quarantine(
    city_run: CityRun, tmp_path: Path
) -> None:
    """The control: the API really serves the values, and a load without the rule keeps them."""
    raw = yaml.safe_load(city_run.config.read_text())
    source = raw["agencies"]["service_requests"]["requests"]
    del source["personal_data"]
    raw["lake"]["root"] = str(tmp_path / "lake")
    raw["state_dir"] = str(tmp_path / "state")
    with running_open311(city_run.city_dir / "open311" / "requests.json", port=0) as api:
        source["url"] = f"{api.url}/open311/v2/requests.json"
        path = tmp_path / "city.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        cfg = load_config(path)
        ingest(cfg, cfg.source("service_requests/requests"), "control")
    hits = search([tmp_path / "lake"], planted(city_run.city_dir))
    assert any("/bronze/service_requests/requests/" in h for h in hits), hits
    assert any("/quarantine/service_requests/requests/" in h for h in hits), hits


def _jsonl_source(tmp_path: Path, lines: list[str], personal_data: dict | None) -> tuple:
    drop = tmp_path / "drop"
    drop.mkdir(exist_ok=True)
    (drop / "reports.jsonl").write_text("\n".join(lines) + "\n")
    spec = {"kind": "files", "path": str(drop / "*.jsonl"), "format": "jsonl", "primary_key": ["id"]}
    if personal_data is not None:
        spec["personal_data"] = personal_data
    return one_source(tmp_path, "reports", "tips", spec)


def test_nested_json_fields_are_dropped_or_hashed_and_unreadable_records_withheld(tmp_path: Path) -> None:
    lines = [
        json.dumps(
            {
                "id": "1",
                "contact": {"email": "wren.halloway@example.org", "phone": "+1-314-555-0142", "prefers": "email"},
                "witnesses": [{"name": "Isolde Varga", "seen": "yes"}, {"name": "Bartholomew Ngata"}],
                "kind": "noise",
            }
        ),
        json.dumps({"id": "2", "contact": None, "witnesses": [], "kind": "pothole"}),
        # the same key again: a duplicate, quarantined as a JSON record of the (cleaned) row
        json.dumps({"id": "1", "contact": {"email": "wren.halloway@example.org"}, "kind": "noise again"}),
        # a truncated line: it cannot be searched for the fields, so its text is withheld
        '{"id": "3", "contact": {"email": "ferdinand.oyelowo@example.org", "phone": "+1-314-555-0177"',
    ]
    rules = {"drop": ["contact.phone", "witnesses.name"], "hash": ["contact.email"]}
    cfg, src = _jsonl_source(tmp_path, lines, rules)
    result = run(cfg, src)
    assert result.row_count == 2 and result.quarantined == 2
    rows = {r["id"]: r for r in bronze_rows(cfg, src)}
    assert json.loads(rows["1"]["contact"]) == {"email": _hmac("wren.halloway@example.org"), "prefers": "email"}
    assert json.loads(rows["1"]["witnesses"]) == [{"seen": "yes"}, {}]
    assert rows["2"]["contact"] is None and rows["1"]["kind"] == "noise"
    records = {q["reason"].split(" ")[0]: q["record"] for q in quarantine_rows(cfg, src)}
    assert records["not"] == WITHHELD  # "not valid JSON: ..."
    assert json.loads(json.loads(records["duplicate"])["contact"]) == {"email": _hmac("wren.halloway@example.org")}
    planted_values = ["wren.halloway", "ferdinand.oyelowo", "555-0142", "555-0177", "Isolde Varga", "Bartholomew"]
    assert search([tmp_path / "lake"], planted_values) == []


def test_hashing_without_a_usable_key_fails_before_anything_is_written(tmp_path: Path, monkeypatch) -> None:
    cfg, src = _jsonl_source(tmp_path, [json.dumps({"id": "1", "email": "a@example.org"})], {"hash": ["email"]})
    monkeypatch.delenv("CITYLAKE_PII_KEY")
    with pytest.raises(ConfigError) as err:
        run(cfg, src)
    message = str(err.value)
    assert "agencies.reports.tips.personal_data.hash" in message and "CITYLAKE_PII_KEY is not set" in message
    assert "export" in message and lake.open_table(lake.bronze_uri(cfg, "reports", "tips")) is None
    assert lake.open_table(lake.quarantine_uri(cfg, "reports", "tips")) is None
    ok, detail = check_source(src)
    assert not ok and "CITYLAKE_PII_KEY is not set" in detail
    monkeypatch.setenv("CITYLAKE_PII_KEY", "x9Q#z")
    with pytest.raises(ConfigError, match="CITYLAKE_PII_KEY has 5 characters, too short"):
        run(cfg, src)
    assert lake.open_table(lake.bronze_uri(cfg, "reports", "tips")) is None


@pytest.mark.parametrize(
    ("rules", "extra", "expected"),
    [
        ({"remove": ["email"]}, {}, "personal_data.remove: unknown key; use drop and hash"),
        ({"drop": ["email"], "hash": ["email"]}, {}, "'email' is listed under both drop and hash"),
        ({"drop": ["id"]}, {}, "personal_data.drop: 'id' is part of primary_key; hash it instead"),
        (
            {"hash": ["seen_at"]},
            {"kind": "sqlite", "table": "tips", "cursor": "seen_at"},
            "'seen_at' is the cursor column",
        ),
        ({"drop": "phone"}, {}, None),  # a single name is accepted as a one-item list
        ({"drop": [""]}, {}, "personal_data.drop: a list of source column names"),
        (
            {"drop": ["address"]},
            {"feeds": "service_requests", "district": {"from": "name", "column": "address"}},
            "'address' is dropped but district.column reads it",
        ),
    ],
)
def test_personal_data_rules_are_checked_when_city_yaml_loads(tmp_path, rules, extra, expected) -> None:
    spec = {"kind": "files", "path": "./*.jsonl", "format": "jsonl", "primary_key": ["id"], "personal_data": rules}
    if extra.get("feeds"):
        extra["columns"] = {"service_request_id": "id", "requested_at": "at", "service_code": "code"}
    spec.update(extra)
    if spec["kind"] != "files":
        del spec["format"]  # only files sources take it
    if expected is None:
        _, src = one_source(tmp_path, "a", "s", spec)
        assert src.personal_data == {"drop": ("phone",), "hash": ()}
        return
    with pytest.raises(ConfigError) as err:
        one_source(tmp_path, "a", "s", spec)
    assert expected in str(err.value) and "agencies.a.s.personal_data" in str(err.value)


def test_a_rule_added_after_loading_stops_the_load_and_says_how_to_reload(tmp_path: Path) -> None:
    lines = [json.dumps({"id": "1", "phone": "+1-314-555-0101"})]
    cfg, src = _jsonl_source(tmp_path, lines, None)
    run(cfg, src)
    lines.append(json.dumps({"id": "2", "phone": "+1-314-555-0102"}))
    cfg, src = _jsonl_source(tmp_path, lines, {"drop": ["phone"]})
    with pytest.raises(ValueError) as err:
        run(cfg, src, "run-2")
    message = str(err.value)
    assert "personal_data.drop" in message and "still holds phone" in message and "delete it and" in message
    assert len(bronze_rows(cfg, src)) == 1, "nothing more was written"


def test_demo_key_is_made_once_by_demo_and_reused_by_the_other_commands(tmp_path: Path, monkeypatch) -> None:
    from orchestration.cli import demo_pii_key

    cfg, _ = _jsonl_source(tmp_path, [], {"hash": ["email"]})
    monkeypatch.delenv("CITYLAKE_PII_KEY")
    demo_pii_key(cfg, create=False)  # run, dev, check: no key file, nothing invented
    assert "CITYLAKE_PII_KEY" not in os.environ and not (cfg.state_dir / "pii.key").exists()
    demo_pii_key(cfg, create=True)
    key = os.environ["CITYLAKE_PII_KEY"]
    assert len(key) == 64 and stat.S_IMODE((cfg.state_dir / "pii.key").stat().st_mode) == 0o600
    monkeypatch.delenv("CITYLAKE_PII_KEY")
    demo_pii_key(cfg, create=False)
    assert os.environ["CITYLAKE_PII_KEY"] == key
    monkeypatch.setenv("CITYLAKE_PII_KEY", "exported-key-always-wins")
    demo_pii_key(cfg, create=True)
    assert os.environ["CITYLAKE_PII_KEY"] == "exported-key-always-wins"
