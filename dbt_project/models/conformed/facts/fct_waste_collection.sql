-- Waste collected (WasteContainer / SDG 11.6.1): tonnes by date, conformed stream and district.
with collections as (

    select * from {{ ref('int_waste_collection__classified') }}
    where reject_reason is null and duplicate_of is null and {{ citylake_window() }}

),

final as (

    select
        agency,
        source_name,
        record_key,
        collected_on,
        stream,
        source_stream,
        tonnes,
        route_id,
        district_code,
        ingested_at,
        partition_date
    from collections

)

select * from final
