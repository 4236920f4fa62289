"""Point-in-polygon: every distinct coordinate pair a source gives -> the district that covers it
(orchestration/district_points.py: the `sail` target computes the same table with the same code, as
dbt-spark runs Python models only on Databricks).

A build of every day (a first build, `--full-refresh`: a changed definition, districts included)
places every pair. A build of some days adds the pairs of those days' rows that are not placed yet:
a pair's district depends on the pair and the districts alone, and no other day's rows changed, so the
table holds every pair a build of every day would, without placing them all again (the reference city
at scale 10: 29,742 pairs on every new day). A pair whose rows were all withdrawn stays, unused (the
daily models look pairs up; none lists them). The window is the build's, as the SQL models
read it (macros/citylake_partitions.sql, citylake_window_bound): CITYLAKE_MIN_DATE / CITYLAKE_MAX_DATE
in the environment (Dagster's runs), else the vars min_date / max_date."""

import os

import pandas as pd

from orchestration.district_points import place


def model(dbt, session):
    dbt.config(materialized="incremental", incremental_strategy="append")
    # dim_district carries the polygons (city_districts, a seed, cannot: real ones exceed a CSV field)
    districts = dbt.ref("dim_district").project("district_code as code, geometry_wkt").df()
    window = ""
    if dbt.is_incremental:
        lo = os.environ.get("CITYLAKE_MIN_DATE") or dbt.config.get("min_date")
        hi = os.environ.get("CITYLAKE_MAX_DATE") or dbt.config.get("max_date")
        window = f" and partition_date between date '{lo}' and date '{hi}'"
    # (dbt reads a Python model's refs as literals: orchestration.dbt_sail.UNIONED lists the same six)
    frames = [
        dbt.ref("int_air_quality_observations__unioned"),
        dbt.ref("int_service_requests__unioned"),
        dbt.ref("int_road_collisions__unioned"),
        dbt.ref("int_transit_ridership__unioned"),
        dbt.ref("int_energy_consumption__unioned"),
        dbt.ref("int_waste_collection__unioned"),
    ]
    pairs = [
        rel.filter(f"district_method = 'coordinates' and district_lat is not null and district_lon is not null{window}")
        .project("district_lat as latitude, district_lon as longitude")
        .distinct()
        for rel in frames
    ]
    if dbt.is_incremental:  # the pairs placed already are kept as they are
        placed = session.sql(f"select latitude, longitude from {dbt.this}")
        pairs = [rel.except_(placed) for rel in pairs]
    points = pd.concat([rel.df() for rel in pairs], ignore_index=True)
    return place(districts, points)
