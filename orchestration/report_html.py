"""The indicator report: one static HTML page a city can send, built at every publication.

Read from the analyst catalog being published: per indicator its definition (indicator_catalog), which
way is better, the latest month citywide and by district (named from dim_district) with the change since
the month before, a map of the districts (report_map), the months as a chart (report_chart), the
calendar years with a coverage that counts the months without data, and what was held back by source
and reason. Every table has a CSV download as a data: URI, and charts and maps are inline SVG, so the
page is one file that opens offline and prints. A few lines of script only mark, once the browser has
laid the page out, how many charts and district shapes were drawn (the tests read that back from
headless Chromium).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
from dataclasses import dataclass

import duckdb

from orchestration.report_chart import CITY, CITY_LABEL, line_chart, value_axis
from orchestration.report_map import CityMap, choropleth, project

YEAR_ROWS_SHOWN = 10
#: a latest-month table by district is shown open up to this many rows (folded, it still prints its CSV)
OPEN_ROWS = 21


@dataclass(frozen=True)
class Gate:
    """One quality gate's latest outcome: the guarded asset, the check, and passed / failed / not run."""

    asset: str
    check: str
    status: str


@dataclass(frozen=True)
class Row:
    """One row of the indicators mart: the fields the report reads, and the whole row for the CSVs."""

    area: str
    grain: str
    start: dt.date
    value: float | None
    coverage: float | None
    raw: tuple


@dataclass(frozen=True)
class Indicator:
    indicator_id: str
    name: str
    unit: str
    formula: str
    definition: str
    standard: str
    better: str | None  # higher | lower | None (no direction)
    note: str | None

    @property
    def lower_is_better(self) -> bool | None:
        return {"lower": True, "higher": False}.get(self.better or "")


def render(con: duckdb.DuckDBPyConnection, city: str, gates: list[Gate]) -> str:
    """The report as one HTML document, read from an analyst catalog connection."""
    info = dict(con.execute("select key, value from _published").fetchall())
    catalogue = [
        Indicator(*r)
        for r in con.execute(
            """select indicator_id, indicator_name, unit, formula, definition, standard, better, note
               from indicator_catalog order by indicator_id"""
        ).fetchall()
    ]
    districts = con.execute(
        "select district_code, district_name, geometry_wkt from dim_district order by district_code"
    ).fetchall()
    names = {code: (name or "").strip() or code for code, name, _ in districts}
    mart = con.execute("select * from indicators order by indicator_id, area_id, period_grain, period_start")
    columns = [c[0] for c in mart.description]
    at = [columns.index(c) for c in ("indicator_id", "area_id", "period_grain", "period_start", "value", "coverage")]
    by_indicator: dict[str, list[Row]] = {}
    for raw in mart.fetchall():
        ind, *fields = (raw[i] for i in at)
        by_indicator.setdefault(ind, []).append(Row(*fields, raw))
    latest_data = max((r.start for rows in by_indicator.values() for r in rows if r.grain == "month"), default=None)
    city_map = project([(code, names[code], geom) for code, _, geom in districts])

    published_at = _json_text(info.get("published_at"))
    parts = [
        _head(f"{city}: indicator report"),
        f"<h1>{_e(city)}: indicator report</h1>",
        '<p class="meta">Data through <strong id="data-date">'
        + (_e(f"{latest_data:%B %Y}") if latest_data else "no data")
        + f"</strong> (latest month). Published {_e(published_at)} UTC, run {_e(_json_text(info.get('run_id')))}.</p>",
        _gates_html(gates),
        _reading_guide(districts, names, city_map),
        "<h2>Citywide, latest month</h2>",
        _city_table(catalogue, by_indicator, columns),
        '<h2>Indicator by indicator</h2><div class="indicators">',
    ]
    for ind in catalogue:
        parts.append(_section(ind, by_indicator.get(ind.indicator_id, []), names, city_map, columns))
    parts += ["</div>", _held_back(con), _SCRIPT, "</body></html>"]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- text helpers


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _json_text(value: str | None) -> str:
    """A _published value (JSON) as plain text."""
    if value is None:
        return ""
    return value[1:-1] if value.startswith('"') and value.endswith('"') else value


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if value != 0 and abs(value) < 1:
        return f"{value:.3g}"  # small per-capita values: 0.0412, not 0.04
    return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"


def _pct(share: float | None) -> str:
    return "" if share is None else f"{share:.0%}"


def unit_for(unit: str, grain: str) -> str:
    """The catalogue's unit with "per period" said as the period it is (per month, per year)."""
    return unit.replace("per period", f"per {grain}")


def _unit_text(unit: str) -> str:
    """The unit as the definition states it: both periods spelled out when it is per period."""
    if "per period" not in unit:
        return _e(unit)
    return f"{_e(unit_for(unit, 'month'))} for a month, {_e(unit_for(unit, 'year'))} for a year"


def _area_name(area: str, names: dict[str, str]) -> str:
    return CITY_LABEL if area == CITY else names.get(area, area)


# ---------------------------------------------------------------- CSV downloads


def csv_link(filename: str, header: list[str], rows: list[list], label: str = "CSV") -> str:
    """A download link holding the table as CSV (UTF-8 with a byte-order mark, so spreadsheets read µ)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow(["" if v is None else v.isoformat() if isinstance(v, dt.date) else v for v in r])
    data = base64.b64encode(("\ufeff" + buf.getvalue()).encode("utf-8")).decode("ascii")
    return (
        f'<a class="csv" download="{_e(filename)}" href="data:text/csv;charset=utf-8;base64,{data}">'
        f"{_e(label)} &#8595;</a>"
    )


# ---------------------------------------------------------------- page parts


def _head(title: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 32px; color: #222;
  max-width: 1180px; }}
h1 {{ margin-bottom: 4px; }} h2 {{ margin-top: 32px; border-bottom: 1px solid #ddd; }}
h3 {{ margin: 0 0 4px; }}
.meta, .note {{ color: #555; }} .note {{ font-size: 13px; }}
table {{ border-collapse: collapse; font-size: 14px; margin: 6px 0; }}
th, td {{ padding: 4px 10px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }}
th {{ background: #f6f6f6; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
.better {{ color: #1a7f37; }} .worse {{ color: #b42318; }} .same {{ color: #555; }}
.gate {{ padding: 8px 12px; border-radius: 4px; display: inline-block; }}
.gate.passed {{ background: #e6f4ea; color: #135c2a; }} .gate.failed {{ background: #fde8e8; color: #8a1c1c; }}
.gate.unknown {{ background: #fff4d6; color: #6b4e00; }}
section.indicator {{ border-top: 1px solid #ddd; padding: 16px 0; }}
.figures {{ display: flex; flex-wrap: wrap; gap: 16px 28px; align-items: flex-start; }}
figure {{ margin: 0; }} figcaption {{ font-size: 13px; color: #555; margin-bottom: 2px; }}
svg text {{ font-size: 11px; fill: #444; }} svg text.line-label {{ font-size: 11.5px; }}
svg text.map-label {{ font-size: 10px; fill: #111; paint-order: stroke; stroke: #fff; stroke-width: 3px; }}
svg path.district:hover {{ stroke: #000; stroke-width: 1.5; }}
.legend {{ font-size: 12px; color: #444; max-width: 340px; }} .legend span {{ white-space: nowrap; }}
.legend i {{ display: inline-block; width: 14px; height: 10px; vertical-align: middle; margin: 0 4px 0 8px;
  border: 1px solid #bbb; }}
a.csv {{ font-size: 12px; margin-left: 8px; }} td.month {{ white-space: nowrap; }}
.id {{ font-size: 11px; color: #777; }}
svg.chart, svg.map {{ max-width: 100%; height: auto; }}
dl.definition {{ display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 6px 0 10px;
  font-size: 14px; }}
dl.definition dt {{ color: #555; }} dl.definition dd {{ margin: 0; }}
details {{ margin-top: 6px; }}
@page {{ margin: 12mm; }}
@media print {{
  body {{ margin: 0; max-width: none; font-size: 11pt; }}
  a.csv, script {{ display: none; }}
  section.indicator, figure, table {{ break-inside: avoid; }}
  h2, h3 {{ break-after: avoid; }}
  * {{ -webkit-print-color-adjust: exact; print-color-adjust: exact; }}
  details > :not(summary) {{ display: block; }}
}}
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


def _reading_guide(districts: list[Row], names: dict[str, str], city_map: CityMap) -> str:
    """How to read the report: periods, per-period units, coverage, direction, areas and the map."""
    items = [
        "<li><strong>Period</strong>: a calendar month or year in the city's local time. "
        "A value <em>per period</em> (per person per period, per 100 000 per period) is the total of that "
        "month or year divided by the population: it is not annualised, so a month's per-capita figure is "
        "about a twelfth of a year's. The units below say <em>per month</em> or <em>per year</em>.</li>",
        "<li><strong>Coverage</strong>: the share of the expected observations (station-days, meter-months, "
        "stop-days, collection weeks; see each definition) that are present. For a month it is measured "
        "over the days the sources have delivered, so a month at the start or end of the data (marked "
        "&dagger;) may cover only part of the month. For a year it is the year's coverage times the share of "
        "its twelve months that have any data: a year with two complete months shows 17 %, not 100 %.</li>",
        "<li><strong>Change</strong>: since the month (or year) before; &#9650; up, &#9660; down, said "
        "<span class=better>better</span> or <span class=worse>worse</span> by the indicator's "
        "direction.</li>",
        f"<li><strong>Areas</strong>: each district, and the {CITY_LABEL.lower()}. The {CITY_LABEL.lower()} also "
        "counts records whose district is not known, so it need not lie between the districts.</li>",
    ]
    if not districts:
        items.append("<li><strong>Map</strong>: no map, because the lake lists no districts.</li>")
    elif not city_map.shapes:
        items.append(
            '<li id="no-map"><strong>Map</strong>: no map, because the lake holds no district boundary '
            "polygons (dim_district.geometry_wkt is empty); give districts.boundaries in city.yaml.</li>"
        )
    elif city_map.without_polygon:
        items.append(
            f"<li><strong>Map</strong>: {len(city_map.without_polygon)} district(s) have no boundary polygon "
            f"and are not on the maps: {_e(', '.join(city_map.without_polygon[:20]))}.</li>"
        )
    if districts and all(names[c] == c for c, _, _ in districts):
        items.append(
            '<li id="codes-only"><strong>Names</strong>: the boundary file gives no district names '
            "(districts.name_property in city.yaml), so districts are shown by their codes.</li>"
        )
    return "<h2>How to read this report</h2><ul class=guide>" + "".join(items) + "</ul>"


def _change(value: float | None, previous: float | None, ind: Indicator) -> str:
    """The change since the previous period as HTML: arrow, amount, and better / worse when it has a direction."""
    if value is None or previous is None:
        return ""
    delta = value - previous
    if abs(delta) <= 1e-12 * max(1.0, abs(previous)):
        return '<span class="same">no change</span>'
    arrow = "&#9650;" if delta > 0 else "&#9660;"
    share = delta / previous if previous else None
    rel = "" if share is None else f" ({share:+.0%})" if abs(share) >= 0.01 else f" ({share:+.1%})"
    text = f"{arrow} {'+' if delta > 0 else '&minus;'}{_e(_fmt(abs(delta)))}{rel}"
    if ind.lower_is_better is None:
        return f'<span class="same">{text}</span>'
    good = (delta < 0) == ind.lower_is_better
    return f'<span class="{"better" if good else "worse"}">{text} {"better" if good else "worse"}</span>'


def _direction(ind: Indicator) -> str:
    return {"lower": "lower is better", "higher": "higher is better"}.get(ind.better or "", "no better or worse")


def _edge_months(rows: list[Row]) -> set[dt.date]:
    """The first and last month an indicator has: where delivered data may cover part of the month."""
    months = sorted({r.start for r in rows if r.grain == "month"})
    return {months[0], months[-1]} if months else set()


def _latest(rows: list[Row], area: str, grain: str) -> tuple[Row | None, Row | None]:
    """The area's latest row of the grain and the row of the period just before it (None when absent)."""
    own = [r for r in rows if r.area == area and r.grain == grain]
    if not own:
        return None, None
    last = own[-1]
    before = _previous_start(last.start, grain)
    prev = next((r for r in own if r.start == before), None)
    return last, prev


def _previous_start(start: dt.date, grain: str) -> dt.date:
    if grain == "year":
        return start.replace(year=start.year - 1)
    return (start - dt.timedelta(days=1)).replace(day=1)


def _city_table(catalogue: list[Indicator], by_indicator: dict[str, list[Row]], columns: list[str]) -> str:
    body, csv_rows = [], []
    for ind in catalogue:
        rows = by_indicator.get(ind.indicator_id, [])
        last, prev = _latest(rows, CITY, "month")
        if last is None:
            body.append(
                f'<tr data-indicator="{_e(ind.indicator_id)}"><td>{_name_cell(ind)}</td>'
                f'<td colspan="6" class="note">{_e(ind.note or "no data")}</td></tr>'
            )
            continue
        csv_rows.append(list(last.raw))
        edge = " &dagger;" if last.start in _edge_months(rows) else ""
        body.append(
            f'<tr data-indicator="{_e(ind.indicator_id)}">'
            f'<td>{_name_cell(ind)}</td><td class="month">{last.start:%b %Y}{edge}</td>'
            f'<td class="num">{_e(_fmt(last.value))}</td><td>{_e(unit_for(ind.unit, "month"))}</td>'
            f'<td class="num">{_e(_fmt(prev.value) if prev else "")}</td>'
            f"<td>{_change(last.value, prev.value if prev else None, ind)}</td>"
            f'<td class="num">{_pct(last.coverage)}</td>'
            "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ["indicator", "month", "value", "unit", "month before", "change", "coverage"]
    )
    return f'<table id="citywide"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>' + csv_link(
        "citywide_latest_month.csv", columns, csv_rows, "Download this table as CSV"
    )


def _name_cell(ind: Indicator) -> str:
    """The indicator's name, linked to its section, with its id beneath."""
    return f'<a href="#{_e(ind.indicator_id)}">{_e(ind.name)}</a><div class="id">{_e(ind.indicator_id)}</div>'


def _section(ind: Indicator, rows: list[Row], names: dict[str, str], city_map: CityMap, columns: list[str]) -> str:
    """One indicator: its definition, the latest month's map and table, the chart of months, the years."""
    slug = ind.indicator_id
    out = [
        f'<section class="indicator" id="{_e(slug)}" data-indicator="{_e(slug)}">',
        f"<h3>{_e(ind.name)}</h3>",
        '<dl class="definition">'
        f"<dt>Definition</dt><dd>{_e(ind.definition)}</dd>"
        f"<dt>Formula</dt><dd>{_e(ind.formula)}</dd>"
        f"<dt>Unit</dt><dd>{_unit_text(ind.unit)}</dd>"
        f'<dt>Direction</dt><dd class="direction">{_e(_direction(ind))}</dd>'
        f"<dt>Standard</dt><dd>{_e(ind.standard)} ({_e(ind.indicator_id)})</dd></dl>",
    ]
    monthly = [r for r in rows if r.grain == "month"]
    if not monthly:
        out.append(f'<p class="note">{_e(ind.note or "No data yet.")}</p></section>')
        return "".join(out)
    latest_month = max(r.start for r in monthly)
    edge = _edge_months(rows)
    month_label = f"{latest_month:%B %Y}" + (" &dagger;" if latest_month in edge else "")
    in_month = [r for r in monthly if r.start == latest_month]
    values = {r.area: r.value for r in in_month if r.area != CITY}
    figures = []
    if city_map.shapes and values:
        figures.append(
            f'<figure class="map-figure"><figcaption>Districts, {month_label}; darker is '
            f"{'worse' if ind.lower_is_better is not None else 'higher'}</figcaption>"
            + choropleth(
                city_map, values, f"Map of {ind.name} by district, {latest_month:%B %Y}", _fmt, ind.lower_is_better
            )
            + "</figure>"
        )
    elif city_map.shapes:
        figures.append(f'<p class="note no-district-map">No map: no district has a value in {month_label}.</p>')
    series: dict[str, list[tuple[dt.date, float]]] = {}
    for r in monthly:
        if r.value is not None:
            series.setdefault(r.area, []).append((r.start, float(r.value)))
    floor = value_axis([v for pts in series.values() for _, v in pts])[0]
    axis = "" if floor == 0 else f"; the value axis starts at {floor:,g}, not at zero"
    figures.append(
        f'<figure class="chart-figure"><figcaption>Month by month ({_e(unit_for(ind.unit, "month"))}){axis}'
        "</figcaption>"
        + line_chart(series, names, unit_for(ind.unit, "month"), f"{ind.name} by district and month", _fmt)
        + "</figure>"
    )
    out.append(f'<div class="figures">{"".join(figures)}</div>')
    out.append(_area_table(ind, rows, in_month, names, month_label, columns))
    out.append(_year_table(ind, rows, columns))
    out.append("</section>")
    return "".join(out)


def _area_table(
    ind: Indicator, rows: list[Row], in_month: list[Row], names: dict[str, str], label: str, columns: list[str]
) -> str:
    """The latest month by area (whole city first, then districts by name) with the change since the
    month before."""
    prev_start = _previous_start(in_month[0].start, "month")
    prev = {r.area: r.value for r in rows if r.grain == "month" and r.start == prev_start}
    ordered = sorted(in_month, key=lambda r: (r.area != CITY, _area_name(r.area, names).lower()))
    body = []
    for r in ordered:
        name = _area_name(r.area, names)
        code = "" if r.area == CITY or name == r.area else r.area
        body.append(
            f"<tr><td>{_e(name)}</td><td>{_e(code)}</td><td class=num>{_e(_fmt(r.value))}</td>"
            f"<td class=num>{_e(_fmt(prev.get(r.area)))}</td><td>{_change(r.value, prev.get(r.area), ind)}</td>"
            f"<td class=num>{_pct(r.coverage)}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ["area", "code", "value", "month before", "change", "coverage"])
    csv_rows = [[*r.raw, _area_name(r.area, names)] for r in ordered]
    fold = "" if len(ordered) > OPEN_ROWS else " open"
    return (
        f'<details class="areas"{fold}><summary>{label}, by district ({_e(unit_for(ind.unit, "month"))})'
        f'</summary><table class=areas data-indicator="{_e(ind.indicator_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></details>"
        + csv_link(f"{ind.indicator_id}_latest_month_by_area.csv", [*columns, "area_name"], csv_rows)
    )


def year_coverage(year_row: Row, months_with_data: int) -> float | None:
    """A year's coverage in the report: the mart's coverage (measured over the delivered days) times the
    share of the year's twelve months that have any citywide data for the indicator."""
    return None if year_row.coverage is None else year_row.coverage * months_with_data / 12


def _year_table(ind: Indicator, rows: list[Row], columns: list[str]) -> str:
    """Citywide, calendar year by calendar year (latest first), with honest coverage for partial years."""
    years = [r for r in rows if r.area == CITY and r.grain == "year"]
    if not years:
        return ""
    months: dict[int, list[dt.date]] = {}
    for r in rows:
        if r.area == CITY and r.grain == "month":
            months.setdefault(r.start.year, []).append(r.start)
    by_start = {r.start: r for r in years}
    body, csv_rows = [], []
    for r in reversed(years):
        have = sorted(months.get(r.start.year, []))
        share = year_coverage(r, len(have))
        prev = by_start.get(_previous_start(r.start, "year"))
        months_text = f"{have[0]:%b}" + (f"&ndash;{have[-1]:%b}" if len(have) > 1 else "")
        span = f"{months_text} ({len(have)} of 12 months)" if have else "no month"
        if len(have) == 12:
            span = "all 12 months"
        csv_rows.append([*r.raw, len(have), share])
        if len(body) < YEAR_ROWS_SHOWN:
            body.append(
                f"<tr><td>{r.start.year}</td><td>{span}</td><td class=num>{_e(_fmt(r.value))}</td>"
                f"<td>{_change(r.value, prev.value if prev else None, ind)}</td>"
                f'<td class="num year-coverage">{_pct(share)}</td></tr>'
            )
    head = "".join(f"<th>{h}</th>" for h in ["year", "months with data", "value", "change", "coverage"])
    more = f" (latest {YEAR_ROWS_SHOWN}; the CSV has all {len(years)})" if len(years) > YEAR_ROWS_SHOWN else ""
    return (
        f'<p class="note">Whole city by calendar year ({_e(unit_for(ind.unit, "year"))}){more}:</p>'
        f'<table class="years" data-indicator="{_e(ind.indicator_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
        + csv_link(
            f"{ind.indicator_id}_citywide_by_year.csv",
            [*columns, "months_with_data", "coverage_of_year"],
            csv_rows,
        )
    )


def _held_back(con: duckdb.DuckDBPyConnection) -> str:
    held_back = con.execute("select coalesce(sum(records), 0) from quarantine_summary").fetchone()[0]
    rows = con.execute(
        """select agency || '/' || source_name as source, layer, reason, sum(records) as records
           from quarantine_summary group by all order by source, layer, records desc, reason"""
    ).fetchall()
    body = "".join(
        f"<tr><td>{_e(s)}</td><td>{_e(layer)}</td><td>{_e(reason)}</td><td class=num>{n:,}</td></tr>"
        for s, layer, reason, n in rows
    )
    return (
        "<h2>Held back</h2>"
        f'<p><strong id="held-back">{held_back:,}</strong> records were held back in quarantine and count in no '
        "indicator. Each is in the catalog's <code>quarantine</code> table with its key and reason; here they "
        "are counted by source and reason (a record's own key is shown as &lt;key&gt;).</p>"
        '<table id="held-back-reasons"><thead><tr><th>source</th><th>layer</th><th>reason</th><th>records</th>'
        f"</tr></thead><tbody>{body}</tbody></table>"
        + csv_link("held_back_by_reason.csv", ["source", "layer", "reason", "records"], [list(r) for r in rows])
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows]
    out.append("</tbody></table>")
    return "".join(out)


# marks the charts and district shapes the browser actually laid out with a visible size
_SCRIPT = """<script>
window.addEventListener("load", function () {
  var drawn = 0, shapes = 0;
  document.querySelectorAll("section[data-indicator] svg.chart").forEach(function (svg) {
    var box = svg.getBoundingClientRect();
    var length = 0;
    svg.querySelectorAll("path.series, path.band").forEach(function (p) { length += p.getTotalLength(); });
    var points = svg.querySelectorAll("circle").length;
    if (box.width > 0 && box.height > 0 && (length > 0 || points > 0)) {
      drawn += 1;
      svg.setAttribute("data-drawn", Math.round(box.width) + "x" + Math.round(box.height));
    }
  });
  document.querySelectorAll("section[data-indicator] svg.map").forEach(function (svg) {
    var n = 0;
    svg.querySelectorAll("path.district").forEach(function (p) {
      var b = p.getBBox();
      if (b.width > 0 && b.height > 0) { n += 1; }
    });
    svg.setAttribute("data-shapes-drawn", String(n));
    shapes += n;
  });
  document.body.setAttribute("data-charts-drawn", String(drawn));
  document.body.setAttribute("data-shapes-drawn", String(shapes));
});
</script>"""
