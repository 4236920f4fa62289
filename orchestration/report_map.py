"""The report's district maps: one inline-SVG choropleth per indicator, drawn from dim_district's WKT.

Boundaries are projected once for the whole city (equirectangular, longitudes scaled by the cosine of
the city's mean latitude, which keeps shapes true at city scale) and simplified to what a few hundred
pixels can show. Every district is one `<path>`, its polygons and their holes as sub-paths filled with
the even-odd rule, so a MultiPolygon's islands and a district's lake draw as they are.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import shapely
from shapely import wkt
from shapely.errors import ShapelyError

MAP_W, MAP_H = 340, 280
PAD = 6
#: sequential, colour-blind-safe (ColorBrewer OrRd, 5 classes): the darkest is always the worse end
CLASSES = ["#fef0d9", "#fdcc8a", "#fc8d59", "#e34a33", "#b30000"]
NO_VALUE = "#d9d9d9"
#: names are written on the map only while they fit
MAX_LABELS = 12


@dataclass(frozen=True)
class Shape:
    """One district, projected: its SVG path data and where its name goes."""

    code: str
    name: str
    d: str
    label_at: tuple[float, float]


@dataclass(frozen=True)
class CityMap:
    """Every district that has a polygon, projected into one MAP_W x MAP_H box, and those that have none."""

    shapes: list[Shape]
    without_polygon: list[str]
    height: int


def project(districts: list[tuple[str, str, str | None]]) -> CityMap:
    """(code, display name, WKT) per district -> projected shapes; a district without a usable polygon
    (no WKT, WKT that does not parse, a point or line) is listed, not drawn."""
    polygons, missing = [], []
    for code, name, text in districts:
        geom = _polygonal(text)
        if geom is None:
            missing.append(code)
        else:
            polygons.append((code, name, geom))
    if not polygons:
        return CityMap([], missing, 0)
    minx, miny, maxx, maxy = shapely.total_bounds([g for _, _, g in polygons])
    kx = math.cos(math.radians((miny + maxy) / 2))
    width, height = max((maxx - minx) * kx, 1e-9), max(maxy - miny, 1e-9)
    scale = min((MAP_W - 2 * PAD) / width, (MAP_H - 2 * PAD) / height)
    box_h = math.ceil(height * scale + 2 * PAD)
    dx = (MAP_W - width * scale) / 2

    def xy(lon: float, lat: float) -> tuple[float, float]:
        return dx + (lon - minx) * kx * scale, PAD + (maxy - lat) * scale

    shapes = []
    for code, name, geom in polygons:
        # drop detail below half a pixel; a part that would vanish keeps its own outline
        simple = shapely.simplify(geom, 0.5 / scale, preserve_topology=True)
        if simple.is_empty:
            simple = geom
        label = geom.point_on_surface()
        shapes.append(Shape(code, name, _path(simple, xy), xy(label.x, label.y)))
    return CityMap(shapes, missing, box_h)


def _polygonal(text: str | None) -> shapely.Geometry | None:
    if not text:
        return None
    try:
        geom = wkt.loads(text)
    except (ShapelyError, ValueError):
        return None
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon") and not p.is_empty]
    return shapely.union_all(parts) if len(parts) > 1 else (parts[0] if parts else None)


def _path(geom: shapely.Geometry, xy) -> str:
    rings = []
    for poly in shapely.get_parts(geom):
        for ring in [poly.exterior, *poly.interiors]:
            coords = list(ring.coords)[:-1]
            pts = [xy(lon, lat) for lon, lat in coords]
            rings.append("M" + "L".join(f"{x:.1f},{y:.1f}" for x, y in pts) + "Z")
    return "".join(rings)


def classes(values: list[float], lower_is_better: bool | None) -> list[tuple[float, float, str]]:
    """Up to five equal-width value classes (low, high, colour); the darkest colour marks the worse end
    when the indicator has a direction, the higher end when it has none."""
    lo, hi = min(values), max(values)
    n = 1 if math.isclose(lo, hi) else len(CLASSES)
    step = (hi - lo) / n
    colours = [CLASSES[2]] if n == 1 else list(CLASSES)
    if lower_is_better is False:
        colours.reverse()
    return [(lo + i * step, hi if i == n - 1 else lo + (i + 1) * step, colours[i]) for i in range(n)]


def colour_of(value: float | None, bins: list[tuple[float, float, str]]) -> str:
    if value is None:
        return NO_VALUE
    for _, high, colour in bins:
        if value <= high + 1e-12 * max(1.0, abs(high)):
            return colour
    return bins[-1][2]


def choropleth(
    city_map: CityMap,
    values: dict[str, float],
    label: str,
    fmt,
    lower_is_better: bool | None,
) -> str:
    """One SVG map: each district filled by its value's class, its name and value in a tooltip, and a
    legend of the classes. `label` names what is mapped (indicator and period) for screen readers."""
    present = [v for v in (values.get(s.code) for s in city_map.shapes) if v is not None]
    bins = classes(present, lower_is_better) if present else []
    e = _escape
    out = [
        f'<svg class="map" xmlns="http://www.w3.org/2000/svg" width="{MAP_W}" height="{city_map.height}" '
        f'viewBox="0 0 {MAP_W} {city_map.height}" role="img" aria-label="{e(label)}">'
    ]
    for s in city_map.shapes:
        v = values.get(s.code)
        tip = f"{s.name}: {fmt(v) if v is not None else 'no value'}"
        out.append(
            f'<path class="district" data-code="{e(s.code)}" d="{s.d}" fill="{colour_of(v, bins)}" '
            f'fill-rule="evenodd" stroke="#fff" stroke-width="0.8"><title>{e(tip)}</title></path>'
        )
    if len(city_map.shapes) <= MAX_LABELS:
        for s in city_map.shapes:
            x, y = s.label_at
            out.append(f'<text class="map-label" x="{x:.1f}" y="{y:.1f}" text-anchor="middle">{e(s.name)}</text>')
    out.append("</svg>")
    bound = _bound_format(bins)
    legend = [f'<span><i style="background:{c}"></i>{e(bound(lo))} to {e(bound(hi))}</span>' for lo, hi, c in bins]
    if len(present) < len(city_map.shapes):
        legend.append(f'<span><i style="background:{NO_VALUE}"></i>no value</span>')
    return "".join(out) + f'<div class="legend map-legend">{"".join(legend)}</div>'


def _bound_format(bins: list[tuple[float, float, str]]):
    """Class bounds with the decimals that tell neighbouring classes apart (0.031 to 0.036, not 0.03 to 0.04)."""
    widths = [hi - lo for lo, hi, _ in bins if hi > lo]
    decimals = max(0, 1 - math.floor(math.log10(min(widths)))) if widths else 2
    return lambda v: f"{v:,.{min(decimals, 6)}f}"


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)
