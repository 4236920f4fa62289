-- Transit boardings by service date (local), mode, route and stop, with the stop's district.
with ridership as (

    select * from {{ ref('int_transit_ridership__districted') }}
    where reject_reason is null and duplicate_of is null and {{ citylake_window() }}

),

final as (

    select
        agency,
        source_name,
        record_key,
        service_date,
        boardings,
        lower(mode) as mode,
        route_id,
        stop_id,
        coalesce(latitude, district_lat) as latitude,
        coalesce(longitude, district_lon) as longitude,
        district_code,
        ingested_at,
        partition_date
    from ridership

)

select * from final
