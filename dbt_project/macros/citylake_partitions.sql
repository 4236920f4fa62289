{#- Daily partitions. The time-based models (tag `daily`: the per-entity intermediate models and the
    conformed facts) are incremental: each build replaces the days from min_date to max_date
    (city-local dates, citylake_window_bound: Dagster passes the partition window, a plain `dbt build`
    takes every day) and keeps the others. Each record's day is its `partition_date`. A build of some days
    (citylake_is_window) reads into the generated staging models' dedup only the keys with a
    version dated in them (orchestration/dbt_build.py, render_window_versions). -#}

{% macro citylake_window_bound(which) -%}
    {#- 'min_date' or 'max_date' of this build. Dagster passes its partition window in the environment
        (CITYLAKE_MIN_DATE, CITYLAKE_MAX_DATE), read only when executing: dbt keeps its parsed project
        across builds of different windows (a changed --vars makes every build parse the whole project
        again, seconds each). A plain `dbt build` takes the vars (`--vars`, else every day). -#}
    {%- if execute -%}
        {{ return(env_var('CITYLAKE_' ~ (which | upper), var(which))) }}
    {%- endif -%}
    {{ return(var(which)) }}
{%- endmacro %}

{% macro citylake_window(column='partition_date') -%}
    {{ column }} between date '{{ citylake_window_bound("min_date") }}' and date '{{ citylake_window_bound("max_date") }}'
{%- endmacro %}

{% macro citylake_delete_window() -%}
    {#- pre-hook of the daily models: in the same transaction as the insert, drop the days being
        rebuilt (and rows from before partitions existed, which carry no partition_date). -#}
    {%- if is_incremental() -%}
        delete from {{ this }} where partition_date is null or {{ citylake_window() }}
    {%- endif -%}
{%- endmacro %}

{% macro citylake_drop_moved_records() -%}
    {#- post-hook of the daily models: a record delivered again with a different day (a corrected
        date) lives on in its new day only; its old day, outside this window, lets it go. -#}
    {%- if is_incremental() -%}
        {#- (a semi-join on the three columns: a key built as one string cost a scan of the whole
            table's strings, 0.31 s against 0.14 s on 8M air readings) -#}
        delete from {{ this }} as outside
        where not ({{ citylake_window('outside.partition_date') }})
            and exists (
                select 1 from {{ this }} as inside
                where {{ citylake_window('inside.partition_date') }}
                    and inside.agency = outside.agency
                    and inside.source_name = outside.source_name
                    and inside.record_key = outside.record_key
            )
    {%- endif -%}
{%- endmacro %}

{% macro citylake_local_today() -%}
    {{ return(adapter.dispatch('citylake_local_today', 'citylake')()) }}
{%- endmacro %}
{% macro duckdb__citylake_local_today() -%}
    cast(now() at time zone '{{ var("city_timezone") }}' as date)
{%- endmacro %}
{% macro spark__citylake_local_today() -%}
    cast(from_utc_timestamp(current_timestamp(), '{{ var("city_timezone") }}') as date)
{%- endmacro %}

{% macro citylake_partition_date(event_date, ingested_at) -%}
    {#- The record's day: the city-local date of its event, else (unreadable or missing) of its
        arrival; clamped to the partitions that exist: history from before partitions.start lives in
        the first partition, and a record dated in the future (quarantined for it, see
        citylake_time_reject_reason) in today's. -#}
    least(
        greatest(
            coalesce({{ event_date }}, {{ citylake_local_date(ingested_at) }}),
            date '{{ var("partitions_start") }}'
        ),
        {{ citylake_local_today() }}
    )
{%- endmacro %}

{% macro citylake_time_reject_reason(column, event_date) -%}
    {#- A record dated after today on the city's own clock (its local calendar day, the city's time
        zone) has not happened: it is held back until a build of its day runs on or after that day. -#}
    case
        when {{ event_date }} < date '1900-01-01'
            then '{{ column }} ' || {{ event_date }} || ' is before 1900'
        when {{ event_date }} > {{ citylake_local_today() }}
            then '{{ column }} ' || {{ event_date }} || ' is in the future'
    end
{%- endmacro %}

{% macro citylake_is_window() -%}
    {#- Whether this build replaces only some days, leaving out some a record may be dated in: the
        staging models then read only the keys with a version dated in the window
        (orchestration/dbt_build.py, render_window_versions), else bronze whole. Every record's day lies
        from partitions.start through today (citylake_partition_date), so a window covering those
        reads everything; so does one `citylake run` says holds all the data there is (CITYLAKE_READ_ALL,
        its build of everything: finding the keys dated in the window would find every key). Reading
        more than the window needs never changes the rows: the union filters them on partition_date. -#}
    {%- if execute and env_var("CITYLAKE_READ_ALL", "false") == "true" -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set today = modules.datetime.datetime.now(modules.pytz.timezone(var("city_timezone"))).date() -%}
    {{ return(
        (citylake_window_bound("min_date") | string) > (var("partitions_start") | string)
        or (citylake_window_bound("max_date") | string) < today.isoformat()
    ) }}
{%- endmacro %}

{#- Daily summaries of a fact (tag `daily`, e.g. int_air_quality__station_days): a row per group and
    day holding `counted`, the number of fact rows it sums. Outside its window a build of the fact only
    deletes rows (citylake_drop_moved_records), so a summary day whose count differs from the fact's
    is stale; the window's days are rebuilt as the fact's are. -#}

{% macro citylake_stale_summary_days(fact, counted) -%}
    {#- the days whose fact rows the summary does not hold exactly: a count that differs, or a day one
        of them lacks -#}
    select coalesce(f.partition_date, s.partition_date)
    from (select partition_date, count(*) as n from {{ ref(fact) }} group by partition_date) as f
    full outer join (select partition_date, sum({{ counted }}) as n from {{ this }} group by partition_date) as s
        on f.partition_date = s.partition_date
    where f.n is distinct from s.n
{%- endmacro %}

{% macro citylake_delete_summary_days(fact, counted) -%}
    {#- pre-hook of a summary: drop its window's days and its stale ones (rows before partitions
        existed carry no partition_date); the model then builds every day it lacks -#}
    {%- if is_incremental() -%}
        delete from {{ this }}
        where partition_date is null
            or {{ citylake_window() }}
            or partition_date in ({{ citylake_stale_summary_days(fact, counted) }})
    {%- endif -%}
{%- endmacro %}
