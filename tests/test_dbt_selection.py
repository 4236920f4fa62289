"""dagster-dbt without dbt-core in the run's process (orchestration/dbt_selection.py).

Random cities (tests/random_city.py: random agencies, sources, entities, partitions) are loaded as code
locations three ways, each in a fresh process: the first load of a project (its selections evaluated by
dbt and kept beside the manifest), a second load (read from there: dbt must not be imported at all), and
dagster-dbt as it is, with dbt-core imported and its own selection. All three must give the same asset
graph: every asset, its upstream assets and partitions, every check. A selections file left by another
manifest (a changed project) must not be used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.config import load_config
from tests.random_city import make_city

DUMP = """
import json, sys
{prelude}
from orchestration.definitions import defs
graph = defs.resolve_asset_graph()
print(json.dumps({{
    "assets": {{
        k.to_user_string(): [sorted(p.to_user_string() for p in graph.get(k).parent_keys),
                             str(graph.get(k).partitions_def)]
        for k in graph.get_all_asset_keys()
    }},
    "checks": sorted(k.asset_key.to_user_string() + ":" + k.name for k in graph.asset_check_keys),
    "dbt_imported": sorted(m for m in sys.modules if m == "dbt" or m.startswith("dbt.")),
}}))
"""

#: dagster-dbt as it is: dbt-core imported first, its own dbt-based selection
AS_IS = """
import dbt.version, dagster_dbt.utils, orchestration.dbt_selection as sel
sel.select_unique_ids = dagster_dbt.utils.select_unique_ids
"""


def _graph(config: Path, prelude: str = "") -> dict:
    env = {**os.environ, "CITYLAKE_CONFIG": str(config)}
    out = subprocess.run(
        [sys.executable, "-c", DUMP.format(prelude=prelude)],
        capture_output=True,
        text=True,
        env=env,
        cwd=config.parent,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("seed", [44])
def test_the_asset_graph_without_dbt_equals_dagster_dbts_own(seed: int, tmp_path: Path) -> None:
    config, _ = make_city(seed, tmp_path / "city")
    first = _graph(config)
    selections = load_config(config).state_dir / "dbt" / "target" / "dagster_selections.json"
    kept = json.loads(selections.read_text())
    assert len(kept["selections"]) == 3, kept.keys()  # the reference, daily and from-facts steps

    second = _graph(config)
    assert second["dbt_imported"] == [], second["dbt_imported"][:10]
    as_is = _graph(config, AS_IS)
    assert "dbt.adapters.base" in as_is["dbt_imported"]  # (the reference really used dbt)
    for graph in (first, second):
        assert graph["assets"] == as_is["assets"] and graph["checks"] == as_is["checks"]
    dbt_checks = [c for c in as_is["checks"] if not c.endswith((":gx_suite", ":freshness_check"))]
    assert len(dbt_checks) > 50 and any(a.startswith("conformed/fct_") for a in as_is["assets"])

    # a selections file of another manifest (the project changed and was parsed again) is not used
    kept["manifest"] = "another-invocation " + kept["manifest"].split(" ", 1)[1]
    kept["selections"] = {entry: [] for entry in kept["selections"]}
    selections.write_text(json.dumps(kept))
    again = _graph(config)
    assert again["assets"] == as_is["assets"] and again["checks"] == as_is["checks"]
    assert json.loads(selections.read_text())["manifest"] != kept["manifest"]
