-- AirQualityObserved: one row per station and instant, UTC, ug/m3, with its district.
with observations as (

    select * from {{ ref('int_air_quality_observations__districted') }}
    where reject_reason is null and duplicate_of is null and {{ citylake_window() }}

),

final as (

    select
        agency,
        source_name,
        record_key,
        station_id,
        observed_at,
        pm25,
        pm10,
        no2,
        so2,
        o3,
        coalesce(latitude, district_lat) as latitude,
        coalesce(longitude, district_lon) as longitude,
        district_code,
        ingested_at,
        partition_date
    from observations

)

select * from final
