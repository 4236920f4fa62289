"""What `citylake run` concludes from its runs.

1. What it learns from its first Dagster run (the loads and their gates) decides what its second
run may build: an asset whose gate failed, and one whose gate raised, are kept out of it with everything
downstream. A gate that raises records no evaluation, only the check step's failure; before, it was
missed, and the second run built the models from loads nobody had vouched for.

Real Dagster runs on an ephemeral instance, of a tiny job shaped like citylake's (a load, its blocking
gate, a model downstream); `_report` and the selection `everything()` computes from it are the code under
test.

2. The summary's `Indicators: n new, n changed, n removed` (status.indicator_changes) counts a value as
changed only when it moved by more than one part in 10^9: a rebuild of unchanged data adds the same
floating-point values in another order, and reported ~670 changed rows at scale 10 before.
"""

from __future__ import annotations

import types
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from orchestration.cli import _report
from orchestration.status import indicator_changes, indicators_snapshot


def _definitions(gate_does: str) -> dg.Definitions:
    @dg.asset(key=["bronze", "roads", "crashes"])
    def load() -> int:
        return 1

    @dg.asset(key=["bronze", "parks", "visits"])
    def other_load() -> int:
        return 2

    @dg.asset_check(asset=load, blocking=True, name="gx_suite")
    def gate() -> dg.AssetCheckResult:
        if gate_does == "raise":
            raise RuntimeError("the suite could not be read")
        return dg.AssetCheckResult(passed=gate_does == "pass")

    @dg.asset_check(asset=other_load, blocking=True, name="gx_suite")
    def other_gate() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    @dg.asset(key=["conformed", "fct_crashes"], deps=[load])
    def model() -> None:
        pass

    @dg.asset(key=["conformed", "fct_visits"], deps=[other_load])
    def other_model() -> None:
        pass

    return dg.Definitions(assets=[load, other_load, model, other_model], asset_checks=[gate, other_gate])


@pytest.mark.parametrize(
    ("gate_does", "ok", "kept_out"),
    [
        ("pass", True, set()),
        ("fail", False, {"bronze/roads/crashes", "conformed/fct_crashes"}),
        ("raise", False, {"bronze/roads/crashes", "conformed/fct_crashes"}),
    ],
)
def test_a_gate_that_fails_or_raises_keeps_its_load_and_downstream_out_of_the_next_run(
    gate_does: str, ok: bool, kept_out: set[str], capsys: pytest.CaptureFixture
) -> None:
    defs = _definitions(gate_does)
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    loads = {dg.AssetKey(["bronze", "roads", "crashes"]), dg.AssetKey(["bronze", "parks", "visits"])}
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance, asset_selection=sorted(loads, key=str), raise_on_error=False)
        # both loads were written: only the gate decides
        assert {e.asset_key for e in result.get_asset_materialization_events()} == loads
        reported_ok, failed = _report(result)
    assert reported_ok is ok
    # what everything() keeps out of its second run (orchestration/cli.py)
    blocked = dg.AssetSelection.assets(*failed).downstream().required_multi_asset_neighbors().resolve(graph)
    assert {k.to_user_string() for k in blocked} == kept_out
    out = capsys.readouterr()
    if gate_does == "raise":
        assert "FAILED bronze__roads__crashes_gx_suite: RuntimeError: the suite could not be read" in out.err
    assert ("FAILED" in out.out) is not ok


def test_indicator_changes_ignore_the_last_digits_of_a_rebuild(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.duckdb"
    cfg = types.SimpleNamespace(catalog_path=catalog)
    key = "indicator_id varchar, area_id varchar, period_grain varchar, period_start date, value double"
    before = [
        ("a", "CITY", "year", "2025-01-01", 0.1 + 0.2),  # summed in another order: 0.6 - 0.3
        ("a", "D1", "year", "2025-01-01", 1e6),  # moves by 1 part in 10^12: the same
        ("a", "D2", "year", "2025-01-01", 10.0),  # moves by 1 part in 10^6: changed
        ("b", "CITY", "year", "2025-01-01", None),  # gets a value: changed
        ("b", "D1", "year", "2025-01-01", 5.0),  # loses it: changed
        ("b", "D2", "year", "2025-01-01", 0.0),  # stays 0: the same
        ("c", "CITY", "year", "2025-01-01", 1.0),  # removed
    ]
    after = [
        ("a", "CITY", "year", "2025-01-01", 0.6 - 0.3),
        ("a", "D1", "year", "2025-01-01", 1e6 * (1 + 1e-12)),
        ("a", "D2", "year", "2025-01-01", 10.00001),
        ("b", "CITY", "year", "2025-01-01", 2.0),
        ("b", "D1", "year", "2025-01-01", None),
        ("b", "D2", "year", "2025-01-01", 0.0),
        ("d", "CITY", "year", "2025-01-01", 3.0),  # new
    ]
    assert 0.1 + 0.2 != 0.6 - 0.3  # the exact comparison would call it changed
    with duckdb.connect(str(catalog)) as con:
        con.execute(f"create table indicators ({key})")
        con.executemany("insert into indicators values (?, ?, ?, ?, ?)", before)
    snapshot = indicators_snapshot(cfg, tmp_path)
    with duckdb.connect(str(catalog)) as con:
        con.execute("delete from indicators")
        con.executemany("insert into indicators values (?, ?, ?, ?, ?)", after)
    assert indicator_changes(cfg, snapshot) == [("a", 0, 1, 0), ("b", 0, 2, 0), ("c", 0, 0, 1), ("d", 1, 0, 0)]
