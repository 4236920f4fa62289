"""The core knows no city: each source's bronze suite comes from its own city's folder, so a city whose
source is named like one of the reference city's does not inherit Riverton's suite."""

from __future__ import annotations

from pathlib import Path

from orchestration.quality import EXPECTATIONS_DIR, bronze_suite
from tests.connectors_support import one_source

REPO = Path(__file__).resolve().parent.parent


def test_the_shared_expectations_hold_no_suite_of_one_city():
    assert EXPECTATIONS_DIR == REPO / "expectations"
    assert not sorted(EXPECTATIONS_DIR.glob("bronze.*.json"))
    assert len(sorted((REPO / "cities" / "riverton" / "expectations").glob("bronze.*.json"))) == 7


def test_a_source_named_like_riverton_s_gets_no_riverton_suite(tmp_path):
    spec = {"kind": "files", "path": "./drop/*.csv", "format": "csv", "primary_key": ["stop", "day"]}
    _, src = one_source(tmp_path, "transport", "ridership", spec)
    suite = bronze_suite(src)
    columns = {e["kwargs"].get("column") for e in suite["expectations"]}
    assert columns == {"stop", "day"}  # Riverton's suite would ask for zone_code, service_date, ...


def test_a_city_s_own_suite_is_read_from_its_folder(tmp_path):
    spec = {"kind": "files", "path": "./drop/*.csv", "format": "csv", "primary_key": ["stop"]}
    (tmp_path / "expectations").mkdir()
    (tmp_path / "expectations" / "bronze.transport.ridership.json").write_text(
        '{"name": "bronze.transport.ridership", "expectations": ['
        '{"type": "expect_column_values_to_match_regex", "kwargs": {"column": "stop", "regex": "^S"}}]}'
    )
    _, src = one_source(tmp_path, "transport", "ridership", spec)
    types = [e["type"] for e in bronze_suite(src)["expectations"]]
    assert types == ["expect_column_values_to_match_regex", "expect_column_values_to_not_be_null"]
