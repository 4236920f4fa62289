-- Service levels of 311, over the requests made in the period (local time):
-- median days to close (closed requests) and the share closed within the category's target, over the
-- closed requests whose category has a target (none: the indicator is absent for that area and period).
-- Coverage: districts 1; citywide, the share of the period's requests placed in a district.
with requests as (

    select
        {{ citylake_local_date('requested_at') }} as local_date,
        is_closed,
        days_to_close,
        days_to_close <= target_days as is_on_time,
        target_days is not null as has_target,
        district_code
    from {{ ref('fct_service_requests') }}

),

areas as (

    {{ citylake_with_areas('requests') }}

),

periods as (

    {{ citylake_with_periods('areas', 'local_date') }}

),

measures as (

    select
        area_id, period_grain, period_start,
        median(days_to_close) filter (where is_closed) as median_days,
        count(*) filter (where is_closed) as closed,
        count(*) filter (where is_closed and has_target) as closed_with_target,
        count(*) filter (where is_closed and is_on_time) as on_time,
        count(*) as requests,
        count(district_code) as placed
    from periods
    group by 1, 2, 3

),

final as (

    select
        'svc_311_median_days_to_close' as indicator_id, area_id, period_grain, period_start,
        median_days as value,
        cast(null as double) as numerator,
        cast(closed as double) as denominator,
        placed / requests as coverage
    from measures
    where closed > 0
    union all
    select
        'svc_311_closed_within_target', area_id, period_grain, period_start,
        cast(100 as double) * on_time / closed_with_target,
        cast(on_time as double),
        cast(closed_with_target as double),
        placed / requests
    from measures
    where closed_with_target > 0

)

select * from final
