-- Calendar days (city local dates) covering every whole year any fact touches.
with dates as (

    {{ citylake_local_date_extremes(ref('fct_air_quality_observations'), 'observed_at') }}
    union all
    {{ citylake_local_date_extremes(ref('fct_service_requests'), 'requested_at') }}
    union all
    {{ citylake_local_date_extremes(ref('fct_road_collisions'), 'accident_at') }}
    union all
    select service_date from {{ ref('fct_transit_ridership') }}
    union all
    select period_start from {{ ref('fct_energy_consumption') }}
    union all
    select collected_on from {{ ref('fct_waste_collection') }}

),

bounds as (

    select
        cast(date_trunc('year', coalesce(min(d), current_date)) as date) as first_day,
        cast(date_trunc('year', coalesce(max(d), current_date)) + interval 1 year - interval 1 day as date)
            as last_day
    from dates

),

final as (

    select
        cast(day as date) as date_day,
        cast(date_trunc('month', day) as date) as month_start,
        cast(date_trunc('year', day) as date) as year_start,
        {{ citylake_isodow('day') }} as iso_day_of_week
    from bounds{{ citylake_days('first_day', 'last_day') }}

)

select * from final
