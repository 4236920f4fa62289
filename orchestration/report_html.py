"""The indicator report: one static HTML page a manager reads without SQL, built at every publication.

One chart per indicator (monthly value by district, the citywide line on top), a citywide table of
the latest month with its coverage, the date of the data and the quality-gate status. Charts are
inline SVG drawn here, so the page is a single file that opens offline: no CDN, no JavaScript library.
A few lines of script only mark, once the browser has laid the charts out, how many were drawn (the
tests read that back from headless Chromium).
"""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass

import duckdb

CITY = "CITY"
#: colour-blind-safe palette (Okabe-Ito, then Tol's muted) for districts; the city line is black
PALETTE = [
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#0072B2",
    "#D55E00",
    "#CC79A7",
    "#F0E442",
    "#332288",
    "#88CCEE",
    "#117733",
    "#AA4499",
    "#999933",
]
WIDTH, HEIGHT = 560, 300
MARGIN = {"left": 64, "right": 16, "top": 16, "bottom": 40}


@dataclass(frozen=True)
class Gate:
    """One quality gate's latest outcome: the guarded asset, the check, and passed / failed / not run."""

    asset: str
    check: str
    status: str


def render(con: duckdb.DuckDBPyConnection, city: str, gates: list[Gate]) -> str:
    """The report as one HTML document, read from an analyst catalog connection."""
    info = dict(con.execute("select key, value from _published").fetchall())
    catalogue = con.execute(
        "select indicator_id, indicator_name, unit, standard from indicator_catalog order by indicator_id"
    ).fetchall()
    monthly = con.execute(
        """select indicator_id, area_id, period_start, value, coverage from indicators
           where period_grain = 'month' order by indicator_id, area_id, period_start"""
    ).fetchall()
    latest_data = max((r[2] for r in monthly), default=None)
    held_back = con.execute("select coalesce(sum(records), 0) from quarantine_summary").fetchone()[0]
    by_source = con.execute(
        """select agency || '/' || source_name, layer, sum(records) from quarantine_summary
           group by all order by 1, 2"""
    ).fetchall()

    series: dict[str, dict[str, list[tuple[dt.date, float]]]] = {}
    for ind, area, period, value, _ in monthly:
        if value is not None:
            series.setdefault(ind, {}).setdefault(area, []).append((period, float(value)))

    published_at = _json_text(info.get("published_at"))
    parts = [
        _head(f"{city}: indicator report"),
        f"<h1>{_e(city)}: indicator report</h1>",
        '<p class="meta">Data through <strong id="data-date">'
        + (_e(f"{latest_data:%B %Y}") if latest_data else "no data")
        + f"</strong> (latest month). Published {_e(published_at)} UTC, run {_e(_json_text(info.get('run_id')))}.</p>",
        _gates_html(gates),
        "<h2>Citywide, latest month</h2>",
        _city_table(catalogue, monthly),
        "<h2>Indicators by district, month by month</h2>",
        '<p class="meta">Each district is a coloured line; the whole city is the thick black line. '
        "Values are for the calendar month in the city's local time.</p>",
        '<div class="charts">',
    ]
    for ind, name, unit, standard in catalogue:
        parts.append(_chart(ind, name, unit, standard, series.get(ind, {})))
    parts += [
        "</div>",
        "<h2>Held back</h2>",
        f'<p><strong id="held-back">{held_back:,}</strong> records were held back in quarantine and count in no '
        "indicator (table <code>quarantine</code> in the catalog has each one with its reason).</p>",
        _table(["source", "layer", "records"], [[s, layer, f"{n:,}"] for s, layer, n in by_source]),
        _SCRIPT,
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _json_text(value: str | None) -> str:
    """A _published value (JSON) as plain text."""
    if value is None:
        return ""
    return value[1:-1] if value.startswith('"') and value.endswith('"') else value


def _head(title: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 32px; color: #222; }}
h1 {{ margin-bottom: 4px; }} h2 {{ margin-top: 32px; border-bottom: 1px solid #ddd; }}
.meta {{ color: #555; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ padding: 4px 10px; white-space: nowrap; border-bottom: 1px solid #eee; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.gate {{ padding: 8px 12px; border-radius: 4px; display: inline-block; }}
.gate.passed {{ background: #e6f4ea; color: #135c2a; }} .gate.failed {{ background: #fde8e8; color: #8a1c1c; }}
.gate.unknown {{ background: #fff4d6; color: #6b4e00; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fill, minmax({WIDTH}px, 1fr)); gap: 24px; }}
figure {{ margin: 0; }} figcaption {{ font-weight: 600; margin-bottom: 4px; }}
figcaption span {{ font-weight: 400; color: #555; }}
svg text {{ font-size: 11px; fill: #444; }}
.legend {{ font-size: 12px; color: #444; }} .legend i {{ display: inline-block; width: 12px; height: 3px;
  vertical-align: middle; margin: 0 4px 0 10px; }}
</style></head><body>"""


def _gates_html(gates: list[Gate]) -> str:
    failed = [g for g in gates if g.status == "failed"]
    unknown = [g for g in gates if g.status not in ("passed", "failed")]
    if failed:
        cls, text = "failed", f"{len(failed)} of {len(gates)} quality gates failed"
    elif unknown or not gates:
        passed = len(gates) - len(unknown)
        cls, text = "unknown", f"{passed} of {len(gates)} quality gates passed; the others have not run"
    else:
        cls, text = "passed", f"All {len(gates)} quality gates on the marts passed"
    out = f'<p><span class="gate {cls}" id="gate-status" data-status="{cls}">Quality: {_e(text)}</span></p>'
    if failed or unknown:
        out += _table(["asset", "check", "status"], [[g.asset, g.check, g.status] for g in failed + unknown])
    return out


def _city_table(catalogue: list[tuple], monthly: list[tuple]) -> str:
    city = {}
    for ind, area, period, value, coverage in monthly:
        if area == CITY:
            city.setdefault(ind, []).append((period, value, coverage))
    rows = []
    for ind, name, unit, _ in catalogue:
        points = city.get(ind, [])
        if not points:
            rows.append([ind, name, "no data", "", "", "", ""])
            continue
        period, value, coverage = points[-1]
        previous = points[-2][1] if len(points) > 1 else None
        rows.append(
            [
                ind,
                name,
                f"{period:%b %Y}",
                _fmt(value),
                unit,
                "" if coverage is None else f"{coverage:.0%}",
                "" if previous is None else _fmt(previous),
            ]
        )
    return _table(
        ["indicator", "name", "month", "value", "unit", "coverage", "previous month"],
        rows,
        numeric={3, 5, 6},
        table_id="citywide",
    )


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), table_id: str = "") -> str:
    ident = f' id="{table_id}"' if table_id else ""
    out = [f"<table{ident}><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for r in rows:
        cells = "".join(f"<td{' class=num' if i in numeric else ''}>{_e(c)}</td>" for i, c in enumerate(r))
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if value != 0 and abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 5 x 10^k steps)."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t < hi + step * 0.999:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _chart(ind: str, name: str, unit: str, standard: str, by_area: dict[str, list[tuple[dt.date, float]]]) -> str:
    caption = f"<figcaption>{_e(name)} <span>({_e(unit)}; {_e(ind)}, {_e(standard)})</span></figcaption>"
    if not by_area:
        return f'<figure data-indicator="{_e(ind)}">{caption}<p class="meta">No data yet.</p></figure>'
    periods = sorted({p for pts in by_area.values() for p, _ in pts})
    values = [v for pts in by_area.values() for _, v in pts]
    ticks = _nice_ticks(min(0.0, *values), max(values))
    y0, y1 = ticks[0], ticks[-1]
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    plot_h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]

    def x(p: dt.date) -> float:
        i = periods.index(p)
        return MARGIN["left"] + (plot_w * (i + 0.5) / len(periods))

    def y(v: float) -> float:
        return MARGIN["top"] + plot_h * (1 - (v - y0) / (y1 - y0))

    svg = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(name)} by district and month">'
    ]
    decimals = max(0, -math.floor(math.log10(ticks[1] - ticks[0]))) if len(ticks) > 1 else 2
    for t in ticks:
        ty = y(t)
        svg.append(
            f'<line x1="{MARGIN["left"]}" x2="{WIDTH - MARGIN["right"]}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#eee"/>'
            f'<text x="{MARGIN["left"] - 6}" y="{ty + 4:.1f}" text-anchor="end">{t:,.{decimals}f}</text>'
        )
    for p in periods:
        svg.append(f'<text x="{x(p):.1f}" y="{HEIGHT - MARGIN["bottom"] + 18}" text-anchor="middle">{p:%b %Y}</text>')
    svg.append(
        f'<line x1="{MARGIN["left"]}" x2="{MARGIN["left"]}" y1="{MARGIN["top"]}" '
        f'y2="{HEIGHT - MARGIN["bottom"]}" stroke="#999"/>'
    )
    areas = sorted(a for a in by_area if a != CITY) + ([CITY] if CITY in by_area else [])
    legend = []
    for i, area in enumerate(areas):
        colour, width = ("#000", 3.5) if area == CITY else (PALETTE[i % len(PALETTE)], 1.6)
        pts = sorted(by_area[area])
        d = " ".join(f"{'M' if j == 0 else 'L'}{x(p):.1f},{y(v):.1f}" for j, (p, v) in enumerate(pts))
        svg.append(
            f'<path class="series" data-area="{_e(area)}" d="{d}" fill="none" stroke="{colour}" '
            f'stroke-width="{width}" stroke-linejoin="round"><title>{_e(area)}</title></path>'
        )
        for p, v in pts:
            svg.append(
                f'<circle cx="{x(p):.1f}" cy="{y(v):.1f}" r="{3 if area == CITY else 2}" fill="{colour}">'
                f"<title>{_e(area)} {p:%b %Y}: {_e(_fmt(v))} {_e(unit)}</title></circle>"
            )
        legend.append(f'<i style="background:{colour}"></i>{_e(area)}')
    svg.append("</svg>")
    return (
        f'<figure data-indicator="{_e(ind)}">{caption}{"".join(svg)}'
        f'<div class="legend">{"".join(legend)}</div></figure>'
    )


# marks the charts the browser actually laid out with a visible size and drawn lines
_SCRIPT = """<script>
window.addEventListener("load", function () {
  var drawn = 0;
  document.querySelectorAll("figure[data-indicator] svg.chart").forEach(function (svg) {
    var box = svg.getBoundingClientRect();
    var length = 0;
    svg.querySelectorAll("path.series").forEach(function (p) { length += p.getTotalLength(); });
    var points = svg.querySelectorAll("circle").length;
    if (box.width > 0 && box.height > 0 && (length > 0 || points > 0)) {
      drawn += 1;
      svg.setAttribute("data-drawn", Math.round(box.width) + "x" + Math.round(box.height));
    }
  });
  document.body.setAttribute("data-charts-drawn", String(drawn));
});
</script>"""
