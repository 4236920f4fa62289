"""The Dagster UI, for real: `citylake dev` serves the project on loopback; a run of one day and a
backfill of two days are launched through the webserver's GraphQL API and succeed (the backfill as one
run over both days), and headless Chromium renders the asset lineage with the bronze, conformed and
mart assets on it. The screenshot goes to test-output/."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import date

import pytest
import yaml

from tests.browser import needs_chromium, run_chromium
from tests.conftest import BIN, REPO, CityRun, free_port, write_city_config


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.loads(resp.read())
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, CityRun]]:
    from orchestration.reference_city import generate

    root = tmp_path_factory.mktemp("ui")
    generate(root / "riverton", scale=0.3, days=30, start=date(2025, 2, 1), seed=4)
    run = CityRun(
        root,
        write_city_config(root, root / "riverton", root / "lake"),
        root / "riverton",
        root / "lake",
        root / "state",
    )
    # the file-arrival sensors would start loads of their own beside the runs this test launches
    cfg = yaml.safe_load(run.config.read_text())
    for sources in cfg["agencies"].values():
        for source in sources.values():
            if source["kind"] == "files":
                source["sensor"] = False
    run.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    port = free_port()
    env = {**os.environ, "CITYLAKE_CONFIG": str(run.config)}
    env.pop("DAGSTER_HOME", None)
    log = open(root / "dev.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "citylake"), "dev", "--port", str(port), "--config", str(run.config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                data = graphql(
                    url,
                    "{ workspaceOrError { ... on Workspace { locationEntries { name "
                    "locationOrLoadError { __typename } } } } }",
                )
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation":
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (root / "dev.log").read_text()[-3000:]
            time.sleep(2)
        yield url, run
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        # `citylake dev` may be gone while its webserver, daemon and code servers still shut down (one
        # outlived a suite run): whatever of its process group is left after 15 s is killed
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""


BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""

DAY, BACKFILL_DAYS = "2025-02-10", ["2025-02-11", "2025-02-12"]


def wait_for(url: str, query: str, variables: dict, pick, done: set[str], timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = pick(graphql(url, query, variables))
        if status in done or time.monotonic() > deadline:
            return status
        time.sleep(3)


def materialized_days(url: str, path: list[str]) -> set[str]:
    """The days Dagster shows as materialized for a daily asset."""
    data = graphql(
        url,
        """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
             assetPartitionStatuses { ... on TimePartitionStatuses { ranges { status startKey endKey } } } } } }""",
        {"key": {"path": path}},
    )
    days = set()
    for r in data["assetNodeOrError"]["assetPartitionStatuses"]["ranges"]:
        if r["status"] == "MATERIALIZED":
            d, end = date.fromisoformat(r["startKey"]), date.fromisoformat(r["endKey"])
            while d <= end:
                days.add(d.isoformat())
                d = date.fromordinal(d.toordinal() + 1)
    return days


def test_one_day_then_a_two_day_backfill_from_the_ui(ui) -> None:
    url, run = ui
    # one day: every asset, the daily ones for DAY only
    params = {
        "selector": {"repositoryLocationName": "citylake", "repositoryName": "__repository__", "jobName": "everything"},
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": DAY}]},
    }
    launched = graphql(url, LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    status = wait_for(
        url,
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
        {"id": launched["run"]["runId"]},
        lambda d: d["runOrError"]["status"],
        {"SUCCESS", "FAILURE", "CANCELED"},
    )
    assert status == "SUCCESS", (run.root / "dev.log").read_text()[-3000:]
    assert run.catalog.exists()
    fact = ["conformed", "fct_air_quality_observations"]
    assert DAY in materialized_days(url, fact)

    # two more days of the daily assets, as a backfill: one run over both days
    nodes = graphql(url, "{ assetNodes { assetKey { path } isPartitioned } }")["assetNodes"]
    daily = [{"path": n["assetKey"]["path"]} for n in nodes if n["isPartitioned"]]
    assert {"path": fact} in daily and not any(k["path"][0] in ("bronze", "marts", "published") for k in daily)
    launched = graphql(url, BACKFILL, {"params": {"partitionNames": BACKFILL_DAYS, "assetSelection": daily}})
    backfill = launched["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    query = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill {
                 status runs(limit: 10) { runId status tags { key value } } } } }"""
    status = wait_for(
        url,
        query,
        {"id": backfill["backfillId"]},
        lambda d: d["partitionBackfillOrError"]["status"],
        {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"},
    )
    runs = graphql(url, query, {"id": backfill["backfillId"]})["partitionBackfillOrError"]["runs"]
    assert status in ("COMPLETED", "COMPLETED_SUCCESS"), (status, runs, (run.root / "dev.log").read_text()[-3000:])
    assert len(runs) == 1 and runs[0]["status"] == "SUCCESS", runs
    tags = {t["key"]: t["value"] for t in runs[0]["tags"]}
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == tuple(
        BACKFILL_DAYS
    )
    assert {DAY, *BACKFILL_DAYS} <= materialized_days(url, fact)


@needs_chromium
def test_the_asset_lineage_renders_in_a_browser(ui) -> None:
    url, _run = ui
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    pages = {
        "asset-groups": ["bronze", "conformed", "marts", "published"],  # the whole lineage, by layer
        "locations/citylake/asset-groups/bronze": ["ridership", "air_vendor_a"],
        # long names are shortened in the graph's boxes: look for the short ones
        "locations/citylake/asset-groups/conformed": ["dim_district", "fct_road_collisions"],
        "locations/citylake/asset-groups/marts": ["indicators", "mart_air_quality"],
    }
    # the graph draws only the boxes in view: a window large enough for each group's whole lineage (the air
    # summary model made the conformed group's too tall for 2400x2000: dim_district fell out of view)
    flags = ["--virtual-time-budget=30000", "--window-size=3200,2400"]
    for page, names in pages.items():
        dom = run_chromium(*flags, "--dump-dom", f"{url}/{page}").stdout
        missing = [n for n in names if n not in dom]
        assert not missing, f"{missing} not drawn on {page}"
    run_chromium(*flags, f"--screenshot={out / 'dagster_asset_graph.png'}", f"{url}/asset-groups")
    assert (out / "dagster_asset_graph.png").stat().st_size > 20_000
