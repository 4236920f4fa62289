{#- Time helpers: every conformed timestamp is UTC; periods are taken in the city's local time. -#}

{% macro citylake_to_utc(raw, timezone) -%}
    {{ return(adapter.dispatch('citylake_to_utc', 'citylake')(raw, timezone)) }}
{%- endmacro %}

{% macro duckdb__citylake_to_utc(raw, timezone) -%}
    {#- A text timestamp to a UTC instant: one with an offset (Z, +02:00) is exact; one without is a
        wall time in the source's declared zone (daylight-saving days included). A date alone (a daily
        mean) is a calendar day of the city: its local midnight in the city's zone, so that it keeps its
        date whatever zone its source is in. -#}
    case
        when regexp_matches({{ raw }}, '\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)? ?(Z|[+-]\d\d(:?\d\d)?)$')
            then try_cast({{ raw }} as timestamptz)
        when regexp_matches(trim({{ raw }}), '^\d{4}-\d\d-\d\d$')
            then try_cast(trim({{ raw }}) as timestamp) at time zone '{{ var("city_timezone") }}'
        -- (a wall time near DuckDB's limits would overflow the zone conversion: read as unreadable)
        when year(try_cast({{ raw }} as timestamp)) between 1 and 9999
            then try_cast({{ raw }} as timestamp) at time zone '{{ timezone }}'
    end
{%- endmacro %}

{% macro spark__citylake_to_utc(raw, timezone) -%}
    {#- the same rules on Spark SQL: its TIMESTAMP is an instant, read and shown in the session's zone
        (UTC in the `sail` profile); a wall time becomes UTC with to_utc_timestamp -#}
    case
        when {{ citylake_regexp_matches(raw, '\\d[T ]\\d\\d:\\d\\d(:\\d\\d(\\.\\d+)?)? ?(Z|[+-]\\d\\d(:?\\d\\d)?)$') }}
            then try_cast({{ raw }} as timestamp)
        when {{ citylake_regexp_matches('trim(' ~ raw ~ ')', '^\\d{4}-\\d\\d-\\d\\d$') }}
            then to_utc_timestamp(try_cast(trim({{ raw }}) as timestamp), '{{ var("city_timezone") }}')
        when year(try_cast({{ raw }} as timestamp)) between 1 and 9999
            then to_utc_timestamp(try_cast({{ raw }} as timestamp), '{{ timezone }}')
    end
{%- endmacro %}

{% macro citylake_local_date(ts) -%}
    {{ return(adapter.dispatch('citylake_local_date', 'citylake')(ts)) }}
{%- endmacro %}
{% macro duckdb__citylake_local_date(ts) -%}
    cast(({{ ts }}) at time zone '{{ var("city_timezone") }}' as date)
{%- endmacro %}
{% macro spark__citylake_local_date(ts) -%}
    cast(from_utc_timestamp({{ ts }}, '{{ var("city_timezone") }}') as date)
{%- endmacro %}

{% macro citylake_local_date_extremes(relation, ts) -%}
    {#- A query of city-local dates of `ts` in `relation` holding its least and greatest (for their
        bounds, not every row's: a conversion per row of a long history cost seconds). A local date
        follows its instant, except that a clock set back may move it back by a day, so the rows within a
        day of the least and greatest instants decide. -#}
    select {{ citylake_local_date(ts) }} as d from {{ relation }}
    where {{ ts }} < (select min({{ ts }}) from {{ relation }}) + interval 1 day
        or {{ ts }} > (select max({{ ts }}) from {{ relation }}) - interval 1 day
{%- endmacro %}

{% macro citylake_grains() -%}
    (select 'month' as period_grain union all select 'year')
{%- endmacro %}

{% macro citylake_period_start(grain, day) -%}
    {#- the first day of `day`'s period of `grain` (a column: 'month' or 'year'); Sail's date_trunc takes
        only a constant unit -#}
    cast(case {{ grain }} when 'month' then date_trunc('month', {{ day }}) else date_trunc('year', {{ day }}) end as date)
{%- endmacro %}

{% macro citylake_period_slots(span_cte) -%}
    {#- For each grain and period: the calendar days, ISO Mondays and months of the period that lie
        within the source's delivered span (`span_cte` has span_start, span_end), for coverage. -#}
    select
        g.period_grain,
        {{ citylake_period_start('g.period_grain', 'd.date_day') }} as period_start,
        count(*) as days,
        count_if({{ citylake_isodow('d.date_day') }} = 1) as mondays,
        count(distinct date_trunc('month', d.date_day)) as months
    from {{ ref('dim_date') }} as d
    cross join {{ span_cte }} as s
    cross join {{ citylake_grains() }} as g
    where d.date_day between s.span_start and s.span_end
    group by 1, 2
{%- endmacro %}

{% macro citylake_with_periods(relation, date_column) -%}
    {#- Each row once per grain, with its period_start. -#}
    select r.*, g.period_grain, {{ citylake_period_start('g.period_grain', 'r.' ~ date_column) }} as period_start
    from {{ relation }} as r
    cross join {{ citylake_grains() }} as g
{%- endmacro %}

{% macro citylake_with_areas(relation) -%}
    {#- Each row once for its district (when known) and once for the whole city. -#}
    select *, district_code as area_id from {{ relation }} where district_code is not null
    union all
    select *, 'CITY' as area_id from {{ relation }}
{%- endmacro %}

{% macro citylake_population(alias) -%}
    {#- Join condition: the census year at or before the period (the earliest census before it). -#}
    left join {{ ref('int_area_population') }} as population
        on population.area_id = {{ alias }}.area_id
        and year({{ alias }}.period_start) >= population.valid_from_year
        and year({{ alias }}.period_start) < population.valid_to_year
{%- endmacro %}
