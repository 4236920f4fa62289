"""The indicator report beside the catalog: complete, self-contained, and drawn by a real browser.

The browser test renders the page in Debian's headless Chromium (`make test` installs it when
missing); on a laptop without it the test is skipped with the reason.
"""

from __future__ import annotations

import re
import struct

import duckdb
import pytest

from orchestration.publish import REPORT_NAME
from tests.browser import CHROMIUM, SKIP_REASON, run_chromium
from tests.conftest import REPO, CityRun


@pytest.fixture(scope="module")
def report(city_run: CityRun) -> str:
    path = city_run.catalog.with_name(REPORT_NAME)
    assert path.exists(), "the report is written beside the catalog"
    return path.read_text(encoding="utf-8")


def test_the_report_has_a_chart_per_indicator_a_citywide_table_the_data_date_and_the_gates(
    city_run: CityRun, report: str
) -> None:
    con = duckdb.connect(str(city_run.catalog), read_only=True)
    try:
        indicators = [r[0] for r in con.execute("select indicator_id from indicator_catalog order by 1").fetchall()]
        city = dict(
            con.execute(
                """select indicator_id, coverage from indicators where area_id = 'CITY' and period_grain = 'month'
                   and period_start = (select max(period_start) from indicators where period_grain = 'month')"""
            ).fetchall()
        )
        held = con.execute("select count(*) from quarantine").fetchone()[0]
    finally:
        con.close()
    assert len(indicators) == 12
    # one figure with one SVG chart per indicator, a line per district and the citywide line
    figures = re.findall(r'<figure data-indicator="([^"]+)">(.*?)</figure>', report, re.DOTALL)
    assert [f[0] for f in figures] == indicators
    for ind, body in figures:
        assert body.count("<svg") == 1, ind
        areas = re.findall(r'<path class="series" data-area="([^"]+)" d="M[\d.]+,[\d.]+', body)
        assert "CITY" in areas and len(areas) == 9, (ind, areas)  # eight districts and the city
    # the citywide table: every indicator, latest month, its coverage as a percentage
    table = re.search(r'<table id="citywide">(.*?)</table>', report, re.DOTALL).group(1)
    rows = re.findall(r"<tr><td>([^<]+)</td>(.*?)</tr>", table)
    assert [r[0] for r in rows] == indicators
    for ind, cells in rows:
        assert "<td>Mar 2025</td>" in cells and f">{city[ind]:.0%}</td>" in cells, ind
    assert re.search(r'id="data-date">March 2025<', report)
    assert re.search(
        r'id="gate-status" data-status="passed">Quality: All \d+ quality gates on the marts passed', report
    )
    assert f'id="held-back">{held:,}<' in report
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r'(src|href)=["\']?(https?:)?//', report)
    assert "<link" not in report and "<img" not in report


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_headless_chromium_draws_every_chart(city_run: CityRun) -> None:
    url = city_run.catalog.with_name(REPORT_NAME).as_uri()
    dom = run_chromium("--dump-dom", url).stdout
    # the page's script counts the charts the browser laid out with a size and drawn lines
    assert 'data-charts-drawn="12"' in dom, dom[-2000:]
    assert dom.count('data-drawn="560x300"') == 12

    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    shot = out / "indicator_report.png"
    shot.unlink(missing_ok=True)
    run_chromium(f"--screenshot={shot}", "--window-size=1400,2000", url)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1400, 2000)
    assert len(png) > 100_000, "a blank page compresses to a few kilobytes; the charts do not"
