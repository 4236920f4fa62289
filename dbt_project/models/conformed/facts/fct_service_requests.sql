-- ServiceRequest (Open311): one row per request, UTC times, one category taxonomy, its district.
with requests as (

    select * from {{ ref('int_service_requests__categorised') }}
    where reject_reason is null and duplicate_of is null and {{ citylake_window() }}

),

final as (

    select
        agency,
        source_name,
        record_key,
        service_request_id,
        requested_at,
        closed_at,
        coalesce(lower(status), case when closed_at is null then 'open' else 'closed' end) as status,
        service_code,
        service_name,
        category,
        target_days,
        agency_responsible,
        latitude,
        longitude,
        district_code,
        closed_at is not null as is_closed,
        {{ citylake_seconds_between('requested_at', 'closed_at') }} / cast(86400 as double) as days_to_close,
        ingested_at,
        partition_date
    from requests

)

select * from final
