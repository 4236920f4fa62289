-- Public transport trips per capita (18.3): boardings in the period / population.
-- Coverage: stop-days present / (the area's stops in the period x days in the delivered span).
with ridership as (

    select service_date as local_date, stop_id, boardings, district_code
    from {{ ref('fct_transit_ridership') }}

),

span as (

    select min(local_date) as span_start, max(local_date) as span_end from ridership

),

slots as (

    {{ citylake_period_slots('span') }}

),

areas as (

    {{ citylake_with_areas('ridership') }}

),

periods as (

    {{ citylake_with_periods('areas', 'local_date') }}

),

measures as (

    select
        area_id, period_grain, period_start,
        sum(boardings) as boardings,
        -- a source without stop_id is one counting point (its days present over the span's days)
        count(distinct (coalesce(stop_id, ''), local_date)) as stop_days,
        count(distinct coalesce(stop_id, '')) as stops
    from periods
    group by 1, 2, 3

),

final as (

    select
        'iso37120_18_3' as indicator_id,
        m.area_id,
        m.period_grain,
        m.period_start,
        m.boardings / population.population as value,
        cast(m.boardings as double) as numerator,
        cast(population.population as double) as denominator,
        m.stop_days / (m.stops * s.days) as coverage
    from measures as m
    inner join slots as s on s.period_grain = m.period_grain and s.period_start = m.period_start
    {{ citylake_population('m') }}

)

select * from final
