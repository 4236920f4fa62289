"""Point-in-polygon: coordinate pairs -> the district that covers each, one piece of code for the dbt
Python model int_district_coordinates (DuckDB) and the `sail` target's build (orchestration/dbt_sail.py).

Vectorised with shapely's STRtree (no Python loop per point). A point on a shared boundary belongs to
the district with the lowest code, so the assignment is deterministic.
"""

from __future__ import annotations

import pandas as pd


def place(districts: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """`points` (latitude, longitude), distinct, with `district_code`: the code of the `districts`
    (code, geometry_wkt) polygon that covers it, else None."""
    import shapely
    from shapely import wkt

    districts = districts.sort_values("code").reset_index(drop=True)
    points = points.drop_duplicates(ignore_index=True)
    codes = pd.Series([None] * len(points), dtype="object")
    if len(points):
        geoms = [wkt.loads(w) for w in districts["geometry_wkt"]]
        tree = shapely.STRtree(geoms)
        pts = shapely.points(points["longitude"].to_numpy(), points["latitude"].to_numpy())
        point_idx, geom_idx = tree.query(pts, predicate="covered_by")
        hits = pd.DataFrame({"p": point_idx, "g": geom_idx}).sort_values(["p", "g"]).drop_duplicates("p")
        codes.iloc[hits["p"].to_numpy()] = districts["code"].astype(str).to_numpy()[hits["g"].to_numpy()]
    points = points.copy()
    points["district_code"] = codes
    return points
