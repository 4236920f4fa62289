"""The Dagster UI, for real: `citylake dev` serves the project on loopback, a run is launched through the
webserver's GraphQL API and succeeds, and headless Chromium renders the asset lineage with the bronze,
conformed and mart assets on it. The screenshot goes to test-output/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import date

import pytest

from tests.browser import CHROMIUM, SKIP_REASON, run_chromium
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


def test_a_run_launched_from_the_ui_succeeds(ui) -> None:
    url, run = ui
    params = {
        "selector": {"repositoryLocationName": "citylake", "repositoryName": "__repository__", "jobName": "everything"},
        "runConfigData": {},
    }
    launched = graphql(url, LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 600
    status = None
    while time.monotonic() < deadline:
        status = graphql(url, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})[
            "runOrError"
        ]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(3)
    assert status == "SUCCESS", (run.root / "dev.log").read_text()[-3000:]
    assert run.catalog.exists()


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
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
    flags = ["--virtual-time-budget=30000", "--window-size=1600,1000"]
    for page, names in pages.items():
        dom = run_chromium(*flags, "--dump-dom", f"{url}/{page}").stdout
        missing = [n for n in names if n not in dom]
        assert not missing, f"{missing} not drawn on {page}"
    run_chromium(*flags, f"--screenshot={out / 'dagster_asset_graph.png'}", f"{url}/asset-groups")
    assert (out / "dagster_asset_graph.png").stat().st_size > 20_000
