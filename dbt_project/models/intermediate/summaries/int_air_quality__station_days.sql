-- Each station's readings per city-local day: their number and, per pollutant, sum and count (a daily
-- mean is sum / count). The air indicators and mart read this (a row per station and day) instead of
-- every reading of the fact.
--
-- Kept in step with the fact by day (citylake_partitions.sql): a build replaces its window's
-- days and every day whose number of fact rows differs from the summary's (a day a moved record left,
-- outside the window, has one fewer), and adds the days it lacks.
{{ config(pre_hook="{{ citylake_delete_summary_days('fct_air_quality_observations', 'readings') }}") }}

with observations as (

    select * from {{ ref('fct_air_quality_observations') }}
    {% if is_incremental() -%}
    -- the days the summary lacks (its pre-hook dropped the window's and the stale ones)
    where partition_date not in (select distinct partition_date from {{ this }} where partition_date is not null)
    {%- endif %}

),

final as (

    select
        partition_date,
        station_id,
        district_code,
        {{ citylake_local_date('observed_at') }} as local_date,
        count(*) as readings,
        sum(pm25) as pm25_sum,
        count(pm25) as pm25_count,
        sum(pm10) as pm10_sum,
        count(pm10) as pm10_count,
        sum(no2) as no2_sum,
        count(no2) as no2_count,
        sum(o3) as o3_sum,
        count(o3) as o3_count
    from observations
    group by 1, 2, 3, 4

)

select * from final
