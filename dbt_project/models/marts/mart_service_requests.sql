-- 311 service requests by month (local), district and category.
with requests as (

    select
        cast(date_trunc('month', {{ citylake_local_date('requested_at') }}) as date) as month_start,
        coalesce(district_code, 'UNASSIGNED') as district_code,
        category,
        is_closed,
        days_to_close,
        days_to_close <= target_days as is_on_time
    from {{ ref('fct_service_requests') }}

),

final as (

    select
        month_start,
        district_code,
        category,
        count(*) as requests,
        count(*) filter (where is_closed) as closed,
        median(days_to_close) filter (where is_closed) as median_days_to_close,
        count(*) filter (where is_on_time) as closed_within_target
    from requests
    group by 1, 2, 3

)

select * from final
order by month_start, district_code, category
