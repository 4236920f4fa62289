-- Waste (16.2 tonnes per capita, 16.3 share recycled). Coverage: (route, stream, week) records present
-- / (the area's route-streams in the period x collection weeks (Mondays) in the delivered span).
with collections as (

    select collected_on as local_date, stream, tonnes, route_id, district_code
    from {{ ref('fct_waste_collection') }}

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
        count(distinct (route_id, stream)) as route_streams
    from periods
    group by all

),

joined as (

    select m.*, s.mondays, population.population
    from measures as m
    inner join slots as s using (period_grain, period_start)
    {{ citylake_population('m') }}

),

final as (

    select
        'iso37120_16_2' as indicator_id, area_id, period_grain, period_start,
        tonnes / population as value,
        tonnes as numerator,
        cast(population as double) as denominator,
        records / (route_streams * mondays) as coverage
    from joined
    union all
    select
        'iso37120_16_3', area_id, period_grain, period_start,
        100.0 * recycled_tonnes / tonnes,
        recycled_tonnes,
        tonnes,
        records / (route_streams * mondays)
    from joined
    where tonnes > 0

)

select * from final
