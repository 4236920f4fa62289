-- Concentrations (8.1, 8.2, 8.4, 8.6): each station's daily means (local date) are averaged over the
-- period, then the area's stations are averaged with equal weight.
with station_days as (

    -- each station's daily mean of each pollutant it measured that day
    {% for pollutant in ['pm25', 'pm10', 'no2', 'o3'] -%}
    select
        station_id, district_code, local_date, '{{ pollutant }}' as pollutant,
        sum({{ pollutant }}_sum) / sum({{ pollutant }}_count) as daily_mean
    from {{ ref('int_air_quality__station_days') }}
    where {{ pollutant }}_count > 0
    group by station_id, district_code, local_date
    {% if not loop.last %}union all
    {% endif -%}
    {%- endfor %}

),

span as (

    select min(local_date) as span_start, max(local_date) as span_end
    from {{ ref('int_air_quality__station_days') }}

),

slots as (

    {{ citylake_period_slots('span') }}

),

areas as (

    {{ citylake_with_areas('station_days') }}

),

periods as (

    {{ citylake_with_periods('areas', 'local_date') }}

),

station_periods as (

    select
        pollutant, area_id, period_grain, period_start, station_id,
        avg(daily_mean) as station_mean,
        count(*) as station_days
    from periods
    group by 1, 2, 3, 4, 5

),

area_periods as (

    select
        pollutant, area_id, period_grain, period_start,
        sum(station_mean) as numerator,
        count(*) as denominator,
        sum(station_days) as station_days
    from station_periods
    group by 1, 2, 3, 4

),

final as (

    select
        case pollutant
            when 'pm25' then 'iso37120_8_1'
            when 'pm10' then 'iso37120_8_2'
            when 'no2' then 'iso37120_8_4'
            when 'o3' then 'iso37120_8_6'
        end as indicator_id,
        a.area_id,
        a.period_grain,
        a.period_start,
        a.numerator / a.denominator as value,
        a.numerator,
        cast(a.denominator as double) as denominator,
        a.station_days / (a.denominator * s.days) as coverage
    from area_periods as a
    inner join slots as s on s.period_grain = a.period_grain and s.period_start = a.period_start

)

select * from final
