{#- District assignment, the same for every entity. -#}

{% macro citylake_normalize_alias(expr) -%}
    {{ return(adapter.dispatch('citylake_normalize_alias', 'citylake')(expr)) }}
{%- endmacro %}
{% macro duckdb__citylake_normalize_alias(expr) -%}
    lower(regexp_replace(trim(cast({{ expr }} as varchar)), '\s+', ' ', 'g'))
{%- endmacro %}
{% macro spark__citylake_normalize_alias(expr) -%}
    {#- Spark's regexp_replace replaces every match -#}
    lower(regexp_replace(trim(cast({{ expr }} as string)), {{ citylake_regex('\\s+') }}, ' '))
{%- endmacro %}

{% macro citylake_assign_district(unioned) %}
{#- Gives every record of `unioned` its district_code and, where a district was given but cannot be
    placed, a reject reason. A record that carries no district at all keeps district_code null: it
    counts toward the citywide value only. -#}
with records as (

    select * from {{ ref(unioned) }}
    where {{ citylake_window() }}

),

aliases as (

    select * from {{ ref('int_district_aliases') }}

),

districts as (

    select code from {{ ref('city_districts') }}

),

points as (

    select * from {{ ref('int_district_coordinates') }}

),

placed as (

    select
        records.*,
        case records.district_method
            when 'coordinates' then points.district_code
            when 'code' then districts.code
            when 'name' then aliases.district_code
        end as district_code,
        case
            when records.district_method = 'coordinates'
                and records.district_lat is not null and records.district_lon is not null
                and points.district_code is null
                then 'outside city boundaries: ' || records.district_lat || ', ' || records.district_lon
            when records.district_method = 'code' and records.district_value is not null
                and districts.code is null
                then 'unknown district code ' || chr(39) || records.district_value || chr(39)
            when records.district_method = 'name' and records.district_value is not null
                and aliases.district_code is null
                then 'unknown district name ' || chr(39) || records.district_value || chr(39) || ' (add it to the district crosswalk)'
        end as district_reject_reason
    from records
    left join points
        on records.district_method = 'coordinates'
        and points.latitude = records.district_lat
        and points.longitude = records.district_lon
    left join districts
        on records.district_method = 'code'
        and upper(districts.code) = upper(trim(records.district_value))
    left join aliases
        on records.district_method = 'name'
        and aliases.alias_key = {{ citylake_normalize_alias('records.district_value') }}

),

final as (

    select
        {{ citylake_star_except(ref(unioned), ['reject_reason', 'district_reject_reason'], added=['district_code']) }},
        coalesce(reject_reason, district_reject_reason) as reject_reason
    from placed

)

select * from final
{% endmacro %}
