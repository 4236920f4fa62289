-- The indicators mart: one row per indicator x area (district code or CITY) x period (month, year).
-- Computed from the conformed facts only; names, units and standards from the indicator catalogue.
with computed as (

    select * from {{ ref('int_indicators__air_quality') }}
    union all by name
    select * from {{ ref('int_indicators__energy') }}
    union all by name
    select * from {{ ref('int_indicators__waste') }}
    union all by name
    select * from {{ ref('int_indicators__mobility') }}
    union all by name
    select * from {{ ref('int_indicators__safety') }}
    union all by name
    select * from {{ ref('int_indicators__service_requests') }}

),

catalogue as (

    select * from {{ ref('indicator_definitions') }}

),

final as (

    select
        computed.indicator_id,
        catalogue.indicator_name,
        catalogue.unit,
        cast(computed.area_id as varchar) as area_id,
        computed.period_grain,
        cast(computed.period_start as date) as period_start,
        cast(computed.value as double) as value,
        cast(computed.numerator as double) as numerator,
        cast(computed.denominator as double) as denominator,
        cast(computed.coverage as double) as coverage,
        catalogue.standard
    from computed
    inner join catalogue using (indicator_id)
    where computed.value is not null

)

select * from final
order by indicator_id, period_grain, period_start, area_id
