"""`citylake docs`: the dbt docs (catalog included) and the GX Data Docs built for the test city and served,
with the indicator report, by one server on loopback; a Data Docs page styled and error-free in headless
Chromium with no network beyond 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.browser import inspect_page, needs_chromium
from tests.conftest import BIN, CityRun, free_port


@pytest.fixture(scope="module")
def served(city_run: CityRun):
    """`citylake docs --port N` on the test city: (base URL, the server process)."""
    port = free_port()
    env = {**os.environ, "CITYLAKE_CONFIG": str(city_run.config)}
    env.pop("DAGSTER_HOME", None)
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "citylake"), "docs", "--port", str(port), "--config", str(city_run.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=city_run.root,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert proc.poll() is None, f"citylake docs exited:\n{proc.stdout.read()}"
            assert time.monotonic() - started < 600, "citylake docs did not serve within 600 s"
            try:
                urllib.request.urlopen(base + "/", timeout=5).read()
                break
            except OSError:
                time.sleep(1)
        print(f"citylake docs built and served in {time.monotonic() - started:.1f} s")
        yield base, city_run
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def data_docs_links(base: str) -> list[str]:
    _, _, body = get(base + "/data-docs/")
    return re.findall(r'href="([^"]+\.html)"', body.decode())


def test_index_links_every_site(served) -> None:
    base, _ = served
    status, ctype, body = get(base + "/")
    page = body.decode()
    assert status == 200 and ctype.startswith("text/html")
    for href in ("dbt/index.html", "data-docs/", "report/indicator_report.html"):
        assert f'href="{href}"' in page, f"index lacks {href}"
        assert get(f"{base}/{href}")[0] == 200


def test_dbt_docs_with_catalog(served) -> None:
    base, _ = served
    status, ctype, body = get(base + "/dbt/index.html")
    assert status == 200 and b"dbt" in body and ctype.startswith("text/html")
    catalog = json.loads(get(base + "/dbt/catalog.json")[2])
    manifest = json.loads(get(base + "/dbt/manifest.json")[2])
    models = {n["metadata"]["name"] for n in catalog["nodes"].values()}
    assert {"indicators", "mart_air_quality", "fct_air_quality_observations", "dim_district"} <= models
    assert "value" in catalog["nodes"]["model.citylake.indicators"]["columns"]
    assert "model.citylake.indicators" in manifest["nodes"]


def test_report_is_served(served) -> None:
    base, run = served
    status, _, body = get(base + "/report/indicator_report.html")
    assert status == 200 and body == (run.lake / "indicator_report.html").read_bytes()
    # nothing else of the lake is served (the catalog, other files)
    with pytest.raises(urllib.error.HTTPError, match="404"):
        get(base + "/report/catalog.duckdb")
    with pytest.raises(urllib.error.HTTPError, match="404"):
        get(base + "/data-docs/../../warehouse.duckdb")


def test_data_docs_pages_are_indexed_and_offline(served) -> None:
    base, run = served
    links = data_docs_links(base)
    pages = list((run.state / "quality" / "data_docs").glob("*/*.html"))
    assert pages and len(links) == len(pages)
    status, _, body = get(f"{base}/data-docs/{links[0]}")
    page = body.decode()
    assert status == 200 and "Expectation Validation Result" in page
    remote = re.findall(r'<(?:link|script|img)\b[^>]*(?:href|src)="https?://[^"]*"', page)
    assert not remote, f"the page still loads from the network: {remote[:3]}"
    # Home goes to the Data Docs index, which exists
    assert 'href="../index.html"' in page and "Home" in page


@needs_chromium
def test_data_docs_page_is_styled_in_chromium(served) -> None:
    base, _ = served
    page = f"{base}/data-docs/{data_docs_links(base)[0]}"
    style = (
        "JSON.stringify({navbar: getComputedStyle(document.querySelector('.navbar')).backgroundColor,"
        " row: getComputedStyle(document.querySelector('.row')).display,"
        " cell: getComputedStyle(document.querySelector('.table td, .table th')).borderTopStyle,"
        " home: document.querySelector('.breadcrumb-item a').href})"
    )
    found = inspect_page(page, style)
    styled = json.loads(found["value"])
    # unstyled, a nav has a transparent background, a div is a block and a cell has no border
    assert styled["navbar"] not in ("rgba(0, 0, 0, 0)", "transparent"), styled
    assert styled["row"] == "flex" and styled["cell"] == "solid", styled
    assert styled["home"] == f"{base}/data-docs/index.html"
    assert found["failed_requests"] == [] and found["console_errors"] == [] and found["exceptions"] == [], found
    assert all(u.startswith(base) for u in found["requests"]), found["requests"]
    # the Home link leads to the index, which lists the page
    index = inspect_page(styled["home"], "document.querySelectorAll('tbody tr').length")
    assert index["value"] == len(data_docs_links(base)) and index["failed_requests"] == []


def test_the_ui_links_report_and_data_docs_over_http(served) -> None:
    """The metadata the UI shows links the docs server (http, loopback), and the paths exist on it."""
    import dagster as dg

    base, run = served
    home = run.state / "dagster"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["published", "analyst_catalog"]))
        report = event.asset_materialization.metadata["report"].value
        check = dg.AssetCheckKey(dg.AssetKey(["marts", "indicators"]), "gx_suite")
        evaluation = instance.get_latest_asset_check_evaluation_record(check).evaluation
        docs = evaluation.metadata["data_docs"].value
    for url in (report, docs):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/(report|data-docs)/.+\.html", url), url
        path = url.split("/", 3)[3]
        assert get(f"{base}/{path}")[0] == 200


def test_a_passing_validation_is_rendered_when_first_asked_for(tmp_path) -> None:
    """A passing gate keeps its outcome (JSON), a failed one its GX page at once; the docs server renders
    the pending page on its first request (GX's page, the same counts), then serves the file."""
    from orchestration import docs_site
    from orchestration.config import load_config
    from orchestration.quality import ExpectationOutcome, SuiteOutcome, data_docs
    from tests.test_up_to_date import brookfield

    cfg = load_config(brookfield(tmp_path) / "city.yaml")
    folder = docs_site.data_docs_dir(cfg) / "bronze.police.crashes"

    def outcome(unexpected: int) -> SuiteOutcome:
        exp = ExpectationOutcome(
            "expect_column_values_to_not_be_null", {"column": "CrashNo"}, element_count=41,
            unexpected_count=unexpected, is_map=True,
        )
        exp.judge()
        return SuiteOutcome("bronze.police.crashes", 41, [exp], scope="rows loaded by run r1")

    passing = data_docs(outcome(0), folder / "run-pass.html")
    failing = data_docs(outcome(7), folder / "run-fail.html")
    assert not passing.exists() and passing.with_suffix(".json").is_file()
    assert "Great Expectations" in failing.read_text() and not failing.with_suffix(".json").exists()

    httpd = docs_site.serve_in_background(cfg, free_port())
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        index = get(base + "/data-docs/")[2].decode()
        assert "bronze.police.crashes/run-pass.html" in index and "bronze.police.crashes/run-fail.html" in index
        status, _, body = get(base + "/data-docs/bronze.police.crashes/run-pass.html")
        page = body.decode()
        assert status == 200 and "Expectation Validation Result" in page and "bronze.police.crashes" in page
        assert "CrashNo" in page and "41" in page
        assert passing.read_text() == page and not passing.with_suffix(".json").exists()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            get(base + "/data-docs/bronze.police.crashes/run-none.html")
    finally:
        httpd.shutdown()
