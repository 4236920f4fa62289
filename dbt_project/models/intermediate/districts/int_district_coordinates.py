"""Point-in-polygon: every distinct coordinate pair a source gives -> the district that covers it
(orchestration/district_points.py: the `sail` target computes the same table with the same code, as
dbt-spark runs Python models only on Databricks)."""

import pandas as pd

from orchestration.district_points import place


def model(dbt, session):
    dbt.config(materialized="table")
    # dim_district carries the polygons (city_districts, a seed, cannot: real ones exceed a CSV field)
    districts = dbt.ref("dim_district").project("district_code as code, geometry_wkt").df()
    # (dbt reads a Python model's refs as literals: orchestration.dbt_sail.UNIONED lists the same six)
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
    )
    return place(districts, points)
