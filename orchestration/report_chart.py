"""The report's month-by-month line charts, inline SVG.

The value axis spans the data (with a little room), not zero to the maximum: differences between
districts are what a reader looks for, and an axis from zero flattens them. Up to LINES districts get a
line each, in colours told apart by colour-blind readers, with the district's name at the line's end;
more districts than that are summarised as the range of all districts and their middle half, around the
citywide line, so that three hundred districts stay readable.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import statistics

CITY = "CITY"
CITY_LABEL = "Whole city"
#: Paul Tol's "bright" and "vibrant" qualitative colours that keep contrast on white (no yellow)
PALETTE = ["#0077BB", "#EE7733", "#009988", "#CC3311", "#AA3377", "#33BBEE", "#882255", "#666633"]
LINES = len(PALETTE)
WIDTH, HEIGHT = 660, 280
MARGIN = {"left": 64, "right": 150, "top": 26, "bottom": 30}
LABEL_GAP = 12  # px between two line-end labels


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 5 x 10^k steps)."""
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    ticks = []
    t = math.floor(lo / step) * step
    while t < hi + step * 0.999:
        ticks.append(round(t, 12))
        t += step
    return ticks


def value_axis(values: list[float]) -> list[float]:
    """Ticks over the data with 5 % room either side; zero only when the data come close to it."""
    lo, hi = min(values), max(values)
    room = (hi - lo) * 0.05
    low = lo - room
    if lo >= 0 and (low < 0 or lo < (hi - lo) * 0.5):
        low = 0.0  # near zero anyway: start there rather than at a negative tick of a quantity that cannot be
    return nice_ticks(low, hi + room)


def _month_index(d: dt.date) -> int:
    return d.year * 12 + d.month - 1


def line_chart(
    by_area: dict[str, list[tuple[dt.date, float]]],
    names: dict[str, str],
    unit: str,
    title: str,
    fmt,
) -> str:
    """The chart of one indicator: `by_area` maps an area code (or CITY) to its (month, value) points."""
    districts = sorted((a for a in by_area if a != CITY), key=lambda a: names.get(a, a).lower())
    months = sorted({p for pts in by_area.values() for p, _ in pts})
    first, last = _month_index(months[0]), _month_index(months[-1])
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    plot_h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]
    ticks = value_axis([v for pts in by_area.values() for _, v in pts])
    y0, y1 = ticks[0], ticks[-1]

    def x(p: dt.date) -> float:
        if first == last:
            return MARGIN["left"] + plot_w / 2
        return MARGIN["left"] + plot_w * (_month_index(p) - first) / (last - first)

    def y(v: float) -> float:
        return MARGIN["top"] + plot_h * (1 - (v - y0) / (y1 - y0))

    e = _escape
    svg = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{e(title)}">'
    ]
    decimals = max(0, -math.floor(math.log10(ticks[1] - ticks[0]))) if len(ticks) > 1 else 2
    right = WIDTH - MARGIN["right"]
    for t in ticks:
        ty = y(t)
        svg.append(
            f'<line x1="{MARGIN["left"]}" x2="{right}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{MARGIN["left"] - 6}" y="{ty + 4:.1f}" text-anchor="end">{t:,.{decimals}f}</text>'
        )
    svg.append(f'<text class="axis-unit" x="4" y="12">{e(unit)}</text>')
    for p in _month_ticks(months):
        svg.append(f'<text x="{x(p):.1f}" y="{HEIGHT - MARGIN["bottom"] + 16}" text-anchor="middle">{p:%b %Y}</text>')
    labels: list[tuple[float, str, str]] = []  # (y, text, colour) at the lines' right ends
    if len(districts) <= LINES:
        for i, area in enumerate(districts):
            colour = PALETTE[i]
            pts = sorted(by_area[area])
            svg.append(_line(pts, x, y, colour, 1.8, area, names.get(area, area), unit, fmt, dots=len(months) <= 36))
            labels.append((y(pts[-1][1]), names.get(area, area), colour))
    else:
        svg += _bands({a: by_area[a] for a in districts}, x, y)
        labels += _band_labels({a: by_area[a] for a in districts}, y, len(districts))
    if CITY in by_area:
        pts = sorted(by_area[CITY])
        svg.append(_line(pts, x, y, "#000", 3.2, CITY, CITY_LABEL, unit, fmt, dots=len(months) <= 36))
        labels.append((y(pts[-1][1]), CITY_LABEL, "#000"))
    for ly, text, colour in _spread(labels, MARGIN["top"] + 4, HEIGHT - MARGIN["bottom"]):
        weight = ' font-weight="700"' if text == CITY_LABEL else ""
        svg.append(
            f'<text class="line-label" x="{right + 8}" y="{ly + 4:.1f}" fill="{colour}"{weight}>{e(text)}</text>'
        )
    svg.append(
        f'<line x1="{MARGIN["left"]}" x2="{MARGIN["left"]}" y1="{MARGIN["top"]}" '
        f'y2="{HEIGHT - MARGIN["bottom"]}" stroke="#999"/>'
    )
    svg.append("</svg>")
    return "".join(svg)


def _line(pts, x, y, colour: str, width: float, area: str, label: str, unit: str, fmt, dots: bool) -> str:
    e = _escape
    d = " ".join(f"{'M' if j == 0 else 'L'}{x(p):.1f},{y(v):.1f}" for j, (p, v) in enumerate(pts))
    out = [
        f'<path class="series" data-area="{e(area)}" d="{d}" fill="none" stroke="{colour}" '
        f'stroke-width="{width}" stroke-linejoin="round"><title>{e(label)}</title></path>'
    ]
    if dots:
        out += [
            f'<circle cx="{x(p):.1f}" cy="{y(v):.1f}" r="{2.6 if area == CITY else 2}" fill="{colour}">'
            f"<title>{e(label)} {p:%b %Y}: {e(fmt(v))} {e(unit)}</title></circle>"
            for p, v in pts
        ]
    return "".join(out)


def _bands(by_area: dict[str, list[tuple[dt.date, float]]], x, y) -> list[str]:
    """The districts' range (light) and middle half (darker) per month, as two shaded areas."""
    per_month: dict[dt.date, list[float]] = {}
    for pts in by_area.values():
        for p, v in pts:
            per_month.setdefault(p, []).append(v)
    months = sorted(per_month)
    out = []
    for cls, fill, q in (("range", "#dde3ea", None), ("middle-half", "#aab7c4", 1)):
        lows, highs = [], []
        for p in months:
            vals = sorted(per_month[p])
            if q is None or len(vals) < 2:
                lo, hi = vals[0], vals[-1]
            else:
                lo, _, hi = statistics.quantiles(vals, n=4, method="inclusive")
            lows.append((p, lo))
            highs.append((p, hi))
        top = " ".join(f"{'M' if j == 0 else 'L'}{x(p):.1f},{y(v):.1f}" for j, (p, v) in enumerate(highs))
        bottom = " ".join(f"L{x(p):.1f},{y(v):.1f}" for p, v in reversed(lows))
        width = ' stroke="' + fill + '" stroke-width="2"' if len(months) == 1 else ""
        out.append(f'<path class="band {cls}" d="{top} {bottom} Z" fill="{fill}"{width}/>')
    return out


def _band_labels(by_area, y, n: int) -> list[tuple[float, str, str]]:
    last = max(p for pts in by_area.values() for p, _ in pts)
    vals = sorted(v for pts in by_area.values() for p, v in pts if p == last)
    if not vals:
        return []
    return [
        (y(vals[-1]), f"highest of {n} districts", "#5a6b7d"),
        (y(vals[0]), f"lowest of {n} districts", "#5a6b7d"),
    ]


def _spread(labels: list[tuple[float, str, str]], top: float, bottom: float) -> list[tuple[float, str, str]]:
    """Line-end labels moved apart vertically just enough not to overlap, kept inside the plot."""
    placed = sorted(labels)
    ys = [ly for ly, _, _ in placed]
    for i in range(1, len(ys)):
        ys[i] = max(ys[i], ys[i - 1] + LABEL_GAP)
    overflow = ys[-1] - bottom if ys else 0
    if overflow > 0:
        ys[-1] -= overflow
        for i in range(len(ys) - 2, -1, -1):
            ys[i] = min(ys[i], ys[i + 1] - LABEL_GAP)
    ys = [max(v, top) for v in ys]
    return [(ys[i], text, colour) for i, (_, text, colour) in enumerate(placed)]


def _month_ticks(months: list[dt.date]) -> list[dt.date]:
    """At most six month labels: every month, every few months, or Januaries every few years."""
    if len(months) <= 6:
        return months
    first, last = _month_index(months[0]), _month_index(months[-1])
    span = last - first
    step = next(s for s in (1, 2, 3, 6, 12, 24, 36, 60, 120) if span / s <= 6)
    start = first if step < 12 else first + (-first) % 12
    return [dt.date(i // 12, i % 12 + 1, 1) for i in range(start, last + 1, step)]


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)
