"""The same rows are validated once (docs/quality.md): no dbt test of a model repeats a check its Great
Expectations suite already makes on the same rows. Each such test was a dbt node and a Dagster check in
every run for nothing the gate had not judged. A fact's key test in a build of some days checks those
days' keys against the whole table (`meta: window_column`), which the suite, reading the days built,
does not: it is not a repeat."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "dbt_project" / "models"
SUITES = REPO / "expectations"


def _dbt_checks() -> dict[str, set[tuple]]:
    """Each model's dbt tests, as (kind, columns, values) in the suites' terms."""
    checks: dict[str, set[tuple]] = {}
    for path in MODELS.rglob("*.yml"):
        for model in (yaml.safe_load(path.read_text()) or {}).get("models") or []:
            found = checks.setdefault(model["name"], set())
            tests = [(None, t) for t in model.get("data_tests") or []]
            tests += [(c["name"], t) for c in model.get("columns") or [] for t in c.get("data_tests") or []]
            for column, test in tests:
                name, spec = (test, {}) if isinstance(test, str) else next(iter(test.items()))
                args = spec.get("arguments", spec)
                if (spec.get("config") or {}).get("meta", {}).get("window_column"):
                    continue  # checks the days' keys against the whole table: the suite does not
                if name == "not_null":
                    found.add(("not_null", (column,), None))
                elif name == "unique":
                    found.add(("unique", (column,), None))
                elif name == "accepted_values":
                    found.add(("in_set", (column,), tuple(sorted(args["values"]))))
                elif name == "dbt_utils_free_unique_combination":
                    found.add(("unique", tuple(sorted(args["columns"])), None))
    return checks


def _suite_checks(path: Path) -> set[tuple]:
    """The suite's strict expectations (no `mostly`), in the same terms."""
    found = set()
    for e in json.loads(path.read_text())["expectations"]:
        kw = e["kwargs"]
        if kw.get("mostly", 1) < 1:
            continue
        kind = {
            "expect_column_values_to_not_be_null": "not_null",
            "expect_column_values_to_be_unique": "unique",
            "expect_compound_columns_to_be_unique": "unique",
            "expect_column_values_to_be_in_set": "in_set",
        }.get(e["type"])
        if kind is None:
            continue
        columns = tuple(sorted(kw["column_list"])) if "column_list" in kw else (kw["column"],)
        values = kw.get("value_set")
        found.add((kind, columns, tuple(sorted(values)) if isinstance(values, list) else None))
    return found


def test_no_dbt_test_repeats_its_models_gx_suite() -> None:
    dbt = _dbt_checks()
    suites = sorted(SUITES.glob("*.json"))
    repeated = {}
    for path in suites:
        model = path.stem.split(".")[-1]
        both = dbt.get(model, set()) & _suite_checks(path)
        if both:
            repeated[model] = sorted(both, key=str)
    assert not repeated, f"dbt tests repeating the model's GX suite (drop them from the .yml): {repeated}"
    # what the comparison reads is there: the suites and the models' tests (else it would pass on nothing)
    assert len(suites) >= 20 and sum(map(len, dbt.values())) >= 40
    assert ("not_null", ("period_grain",), None) in dbt["indicators"]  # kept: the suite's in_set lets a null by
