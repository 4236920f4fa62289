-- Daily air quality by district (city local date): the mean over the district's stations of each
-- station's daily mean, µg/m³.
with observations as (

    select
        station_id,
        district_code,
        {{ citylake_local_date('observed_at') }} as local_date,
        avg(pm25) as pm25,
        avg(pm10) as pm10,
        avg(no2) as no2,
        avg(o3) as o3
    from {{ ref('fct_air_quality_observations') }}
    group by 1, 2, 3

),

final as (

    select
        local_date,
        coalesce(district_code, 'UNASSIGNED') as district_code,
        count(distinct station_id) as stations,
        avg(pm25) as pm25,
        avg(pm10) as pm10,
        avg(no2) as no2,
        avg(o3) as o3
    from observations
    group by 1, 2

)

select * from final
order by local_date, district_code
