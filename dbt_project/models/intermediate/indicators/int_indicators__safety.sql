-- Transportation fatalities per 100 000 (18.8): deaths within 30 days / (population / 100 000).
-- Coverage: districts 1; citywide, the share of the period's collisions placed in a district.
with collisions as (

    select {{ citylake_local_date('accident_at') }} as local_date, dead_within_30_days, district_code
    from {{ ref('fct_road_collisions') }}

),

areas as (

    {{ citylake_with_areas('collisions') }}

),

periods as (

    {{ citylake_with_periods('areas', 'local_date') }}

),

measures as (

    select
        area_id, period_grain, period_start,
        sum(dead_within_30_days) as deaths,
        count(*) as collisions,
        count(district_code) as placed
    from periods
    group by 1, 2, 3

),

final as (

    select
        'iso37120_18_8' as indicator_id,
        m.area_id,
        m.period_grain,
        m.period_start,
        m.deaths / (population.population / cast(100000 as double)) as value,
        cast(m.deaths as double) as numerator,
        population.population / cast(100000 as double) as denominator,
        m.placed / m.collisions as coverage
    from measures as m
    {{ citylake_population('m') }}

)

select * from final
