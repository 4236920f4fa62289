-- RoadAccident: one row per collision, UTC time, casualties, its district.
with collisions as (

    select * from {{ ref('int_road_collisions__districted') }}
    where reject_reason is null and duplicate_of is null and {{ citylake_window() }}

),

final as (

    select
        agency,
        source_name,
        record_key,
        collision_id,
        accident_at,
        coalesce(dead_within_30_days, 0) as dead_within_30_days,
        coalesce(injured, 0) as injured,
        coalesce(latitude, district_lat) as latitude,
        coalesce(longitude, district_lon) as longitude,
        district_code,
        ingested_at,
        partition_date
    from collisions

)

select * from final
