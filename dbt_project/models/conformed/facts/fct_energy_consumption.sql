-- Electricity consumption per meter and billing month, in kWh, with the meter's district.
with readings as (

    select * from {{ ref('int_energy_consumption__districted') }}
    where reject_reason is null and duplicate_of is null and {{ citylake_window() }}

),

final as (

    select
        agency,
        source_name,
        record_key,
        meter_id,
        cast(date_trunc('month', period_start) as date) as period_start,
        kwh,
        lower(trim(sector)) as sector,
        district_code,
        ingested_at,
        partition_date
    from readings

)

select * from final
