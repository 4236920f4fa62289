-- Electricity per capita (7.1 residential, 7.5 all sectors): kWh billed in the period / population.
-- Coverage: meter-months present / (the area's meters in the period x months in the delivered span).
with readings as (

    select meter_id, period_start as local_date, kwh, sector, district_code
    from {{ ref('fct_energy_consumption') }}

),

span as (

    select
        min(local_date) as span_start,
        cast(max(local_date) + interval 1 month - interval 1 day as date) as span_end
    from readings

),

slots as (

    {{ citylake_period_slots('span') }}

),

areas as (

    {{ citylake_with_areas('readings') }}

),

periods as (

    {{ citylake_with_periods('areas', 'local_date') }}

),

sectors as (

    select *, 'iso37120_7_5' as indicator_id from periods
    union all
    select *, 'iso37120_7_1' from periods where sector = 'residential'

),

measures as (

    select
        indicator_id, area_id, period_grain, period_start,
        sum(kwh) as kwh,
        count(*) as meter_months,
        count(distinct meter_id) as meters
    from sectors
    group by 1, 2, 3, 4

),

final as (

    select
        m.indicator_id,
        m.area_id,
        m.period_grain,
        m.period_start,
        m.kwh / population.population as value,
        m.kwh as numerator,
        cast(population.population as double) as denominator,
        m.meter_months / (m.meters * s.months) as coverage
    from measures as m
    inner join slots as s on s.period_grain = m.period_grain and s.period_start = m.period_start
    {{ citylake_population('m') }}

)

select * from final
