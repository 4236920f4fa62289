"""Point-in-polygon: every distinct coordinate pair a source gives -> the district that covers it.

Vectorised with shapely's STRtree (no Python loop per point). A point on a shared boundary belongs to
the district with the lowest code, so the assignment is deterministic.
"""

import pandas as pd
import shapely
from shapely import wkt



def model(dbt, session):
    dbt.config(materialized="table")
    # dim_district carries the polygons (city_districts, a seed, cannot: real ones exceed a CSV field)
    districts = (
        dbt.ref("dim_district")
        .project("district_code as code, geometry_wkt")
        .df()
        .sort_values("code")
        .reset_index(drop=True)
    )
    frames = [
        dbt.ref("int_air_quality_observations__unioned"),
        dbt.ref("int_service_requests__unioned"),
        dbt.ref("int_road_collisions__unioned"),
        dbt.ref("int_transit_ridership__unioned"),
        dbt.ref("int_energy_consumption__unioned"),
        dbt.ref("int_waste_collection__unioned"),
    ]
    points = pd.concat(
        [
            rel.filter("district_method = 'coordinates' and district_lat is not null and district_lon is not null")
            .project("district_lat as latitude, district_lon as longitude")
            .distinct()
            .df()
            for rel in frames
        ],
        ignore_index=True,
    ).drop_duplicates(ignore_index=True)
    codes = pd.Series([None] * len(points), dtype="object")
    if len(points):
        geoms = [wkt.loads(w) for w in districts["geometry_wkt"]]
        tree = shapely.STRtree(geoms)
        pts = shapely.points(points["longitude"].to_numpy(), points["latitude"].to_numpy())
        point_idx, geom_idx = tree.query(pts, predicate="covered_by")
        hits = pd.DataFrame({"p": point_idx, "g": geom_idx}).sort_values(["p", "g"]).drop_duplicates("p")
        codes.iloc[hits["p"].to_numpy()] = districts["code"].astype(str).to_numpy()[hits["g"].to_numpy()]
    points["district_code"] = codes
    return points
