{#- unique combination of columns, without a package (packages would download at run time).

    A daily model's test names its day column in its config, `meta: {window_column: partition_date}`
    (config, not an argument: the test's name, which is its Dagster check's, stays as it was). In a build
    of some days (citylake_is_window) only the keys that have a row in those days are checked, each
    against the whole table. A key wholly outside them was checked when its own days were built, so the
    verdict is the same, and a new day no longer groups the whole table by key
    (fct_air_quality_observations at scale 10: 1.0-1.5 s -> 0.15 s). -#}
{% test dbt_utils_free_unique_combination(model, columns) %}
{%- set window_column = (config.get("meta") or {}).get("window_column") -%}
select {{ columns | join(', ') }}, count(*) as n
from {{ model }} as tested
{%- if window_column and citylake_is_window() %}
where exists (
    select 1 from {{ model }} as built
    where {{ citylake_window('built.' ~ window_column) }}
    {%- for column in columns %}
        and built.{{ column }} is not distinct from tested.{{ column }}
    {%- endfor %}
)
{%- endif %}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
