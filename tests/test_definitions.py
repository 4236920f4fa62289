"""The code location loads, and its asset graph is exactly the snapshot: a rename or a dropped asset,
check or schedule fails here loudly. Regenerate after an intended change with
`CITYLAKE_UPDATE_SNAPSHOT=1 pytest tests/test_definitions.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import CityRun

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"

DUMP = """
import json
from orchestration.definitions import defs
graph = defs.resolve_asset_graph()
checks = sorted(k.asset_key.to_user_string() + ":" + k.name for k in graph.asset_check_keys)
print(json.dumps({
    "assets": sorted(k.to_user_string() for k in graph.get_all_asset_keys()),
    "checks": checks,
    "groups": sorted({graph.get(k).group_name for k in graph.get_all_asset_keys()}),
    "daily": sorted(
        k.to_user_string() + " " + str(graph.get(k).partitions_def) + " " + str(graph.get(k).backfill_policy)
        for k in graph.get_all_asset_keys()
        if graph.get(k).partitions_def
    ),
    "jobs": sorted(j.name for j in defs.jobs if not j.name.startswith("__")),
    "sensors": sorted(s.name for s in defs.sensors),
}))
"""


def test_definitions_match_the_snapshot(city_run: CityRun) -> None:
    env = {**os.environ, "CITYLAKE_CONFIG": str(city_run.config)}
    out = subprocess.run(
        [sys.executable, "-c", DUMP], capture_output=True, text=True, env=env, check=True, cwd=city_run.root
    )
    graph = json.loads(out.stdout.strip().splitlines()[-1])
    if os.environ.get("CITYLAKE_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(graph, indent=1) + "\n")
    assert graph == json.loads(SNAPSHOT.read_text())
    assert "marts/indicators:gx_suite" in graph["checks"]
    assert "bronze/transport/ridership" in graph["assets"] and "published/analyst_catalog" in graph["assets"]
    # the time-based models are daily-partitioned (city time zone, from partitions.start), one run per range
    daily = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in graph["daily"]}
    assert set(daily) == {k for k in graph["assets"] if k.startswith(("intermediate/int_", "conformed/fct_"))} - {
        k for k in graph["assets"] if k.startswith(("intermediate/int_indicators", "intermediate/int_district_a"))
    } - {"intermediate/int_area_population"} | {"conformed/quarantine_records"}
    assert all("Daily, starting 2025-01-01 America/Chicago" in v and "single_run" in v for v in daily.values())
