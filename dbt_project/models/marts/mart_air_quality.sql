-- Daily air quality by district (city local date): the mean over the district's stations of each
-- station's daily mean, µg/m³.
with observations as (

    -- each station's daily means
    select
        station_id,
        district_code,
        local_date,
        sum(pm25_sum) / nullif(sum(pm25_count), 0) as pm25,
        sum(pm10_sum) / nullif(sum(pm10_count), 0) as pm10,
        sum(no2_sum) / nullif(sum(no2_count), 0) as no2,
        sum(o3_sum) / nullif(sum(o3_count), 0) as o3
    from {{ ref('int_air_quality__station_days') }}
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
