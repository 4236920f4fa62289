-- Waste (16.2 tonnes per capita, 16.3 share recycled). Coverage: (route, stream, week) records present
-- / (the area's route-streams in the period x collection weeks (Mondays) in the delivered span); for a
-- source that reports monthly (every record on a month's first day, e.g. NYC's DSNY tonnage) the
-- collection slots are the span's months instead.
with facts as (

    select agency, source_name, collected_on as local_date, stream, tonnes, route_id, district_code
    from {{ ref('fct_waste_collection') }}

),

cadence as (

    select agency, source_name, bool_and(day(local_date) = 1) as is_monthly
    from facts
    group by 1, 2

),

collections as (

    select facts.*, cadence.is_monthly
    from facts
    inner join cadence using (agency, source_name)

),

span as (

    select min(local_date) as span_start, max(local_date) as span_end from collections

),

slots as (

    {{ citylake_period_slots('span') }}

),

areas as (

    {{ citylake_with_areas('collections') }}

),

periods as (

    {{ citylake_with_periods('areas', 'local_date') }}

),

measures as (

    select
        area_id, period_grain, period_start,
        sum(tonnes) as tonnes,
        coalesce(sum(tonnes) filter (where stream = 'recycling'), 0) as recycled_tonnes,
        count(*) as records,
        count(distinct (route_id, stream)) filter (where not is_monthly) as weekly_route_streams,
        count(distinct (route_id, stream)) filter (where is_monthly) as monthly_route_streams
    from periods
    group by 1, 2, 3

),

joined as (

    select
        m.*,
        population.population,
        m.records / (m.weekly_route_streams * s.mondays + m.monthly_route_streams * s.months) as coverage
    from measures as m
    inner join slots as s on s.period_grain = m.period_grain and s.period_start = m.period_start
    {{ citylake_population('m') }}

),

final as (

    select
        'iso37120_16_2' as indicator_id, area_id, period_grain, period_start,
        tonnes / population as value,
        tonnes as numerator,
        cast(population as double) as denominator,
        coverage
    from joined
    union all
    select
        'iso37120_16_3', area_id, period_grain, period_start,
        cast(100 as double) * recycled_tonnes / tonnes,
        recycled_tonnes,
        tonnes,
        coverage
    from joined
    where tonnes > 0

)

select * from final
