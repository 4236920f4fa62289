-- The indicators mart: one row per indicator x area (district code or CITY) x period (month, year).
-- Computed from the conformed facts only; names, units and standards from the indicator catalogue.
with computed as (

    -- every family's rows, their values as doubles before they are stacked (Spark SQL's decimal
    -- arithmetic gives some families decimals; a union of doubles and decimals is refused on Sail)
    {%- for family in ['air_quality', 'energy', 'waste', 'mobility', 'safety', 'service_requests'] %}
    select
        indicator_id, area_id, period_grain, period_start,
        cast(value as double) as value,
        cast(numerator as double) as numerator,
        cast(denominator as double) as denominator,
        cast(coverage as double) as coverage
    from {{ ref('int_indicators__' ~ family) }}
    {%- if not loop.last %}
    union all{% endif %}
    {%- endfor %}

),

catalogue as (

    select * from {{ ref('indicator_definitions') }}

),

final as (

    select
        computed.indicator_id,
        catalogue.indicator_name,
        catalogue.unit,
        cast(computed.area_id as {{ citylake_type('varchar') }}) as area_id,
        computed.period_grain,
        cast(computed.period_start as date) as period_start,
        cast(computed.value as double) as value,
        cast(computed.numerator as double) as numerator,
        cast(computed.denominator as double) as denominator,
        cast(computed.coverage as double) as coverage,
        catalogue.standard
    from computed
    inner join catalogue on catalogue.indicator_id = computed.indicator_id
    where computed.value is not null

)

select * from final
order by indicator_id, period_grain, period_start, area_id
