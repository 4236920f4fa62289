{#- SQL that differs between DuckDB (the warehouse) and Spark SQL (the `sail` target, dbt-sail: adapter
    type `sail`, which falls back to the `spark__` macros). Each macro's `duckdb__` form is the SQL the
    DuckDB models always had; the `spark__` form gives the same values on Sail (docs/deploy.md, "dbt on
    a cluster engine (Sail)"). Where a portable form exists the models use it directly instead. -#}

{% macro citylake_quote(name) -%}
    {{ return(adapter.dispatch('citylake_quote', 'citylake')(name)) }}
{%- endmacro %}
{% macro default__citylake_quote(name) -%}
    "{{ name | replace('"', '""') }}"
{%- endmacro %}
{% macro spark__citylake_quote(name) -%}
    {#- "x" is a string literal in Spark SQL -#}
    `{{ name | replace('`', '``') }}`
{%- endmacro %}

{% macro citylake_type(name) -%}
    {{ return(adapter.dispatch('citylake_type', 'citylake')(name)) }}
{%- endmacro %}
{% macro default__citylake_type(name) -%}
    {{ name }}
{%- endmacro %}
{% macro spark__citylake_type(name) -%}
    {#- Spark has no VARCHAR without a length and no TIMESTAMPTZ: its TIMESTAMP is an instant (the
        session time zone is UTC, see the `sail` profile) -#}
    {{ {'varchar': 'string', 'timestamptz': 'timestamp'}.get(name | lower, name) }}
{%- endmacro %}

{% macro citylake_union_all_by_name() -%}
    {{ return(adapter.dispatch('citylake_union_all_by_name', 'citylake')()) }}
{%- endmacro %}
{% macro default__citylake_union_all_by_name() -%}
    union all by name
{%- endmacro %}
{% macro spark__citylake_union_all_by_name() -%}
    {#- Spark SQL unions by position: every part must list the same columns in the same order (the
        generated staging models and the indicator models do) -#}
    union all
{%- endmacro %}

{% macro citylake_not_finite(column) -%}
    {{ return(adapter.dispatch('citylake_not_finite', 'citylake')(column)) }}
{%- endmacro %}
{% macro default__citylake_not_finite(column) -%}
    isnan({{ column }}) or isinf({{ column }})
{%- endmacro %}
{% macro spark__citylake_not_finite(column) -%}
    isnan({{ column }}) or abs({{ column }}) = cast('Infinity' as double)
{%- endmacro %}

{% macro citylake_regex(pattern) -%}
    {{ return(adapter.dispatch('citylake_regex', 'citylake')(pattern)) }}
{%- endmacro %}
{% macro default__citylake_regex(pattern) -%}
    '{{ pattern }}'
{%- endmacro %}
{% macro spark__citylake_regex(pattern) -%}
    {#- a backslash escapes in a Spark SQL string literal -#}
    '{{ pattern | replace("\\", "\\\\") }}'
{%- endmacro %}

{% macro citylake_regexp_matches(value, pattern) -%}
    {{ return(adapter.dispatch('citylake_regexp_matches', 'citylake')(value, pattern)) }}
{%- endmacro %}
{% macro default__citylake_regexp_matches(value, pattern) -%}
    regexp_matches({{ value }}, {{ citylake_regex(pattern) }})
{%- endmacro %}
{% macro spark__citylake_regexp_matches(value, pattern) -%}
    ({{ value }} rlike {{ citylake_regex(pattern) }})
{%- endmacro %}

{% macro citylake_star_except(relation, columns, alias=none, added=[]) -%}
    {#- `* exclude (columns)` of a query over `relation` (prefixed `alias.` when given) whose own columns
        are the relation's and then `added`. -#}
    {{ return(adapter.dispatch('citylake_star_except', 'citylake')(relation, columns, alias, added)) }}
{%- endmacro %}
{% macro default__citylake_star_except(relation, columns, alias, added) -%}
    {{ alias ~ '.' if alias }}* exclude ({{ columns | join(', ') }})
{%- endmacro %}
{% macro spark__citylake_star_except(relation, columns, alias, added) -%}
    {#- Spark SQL has no `* exclude`: the relation's columns, listed (known once it is built) -#}
    {%- if execute -%}
        {%- set keep = [] -%}
        {%- for c in adapter.get_columns_in_relation(relation) if c.name | lower not in columns | map('lower') | list -%}
            {%- do keep.append((alias ~ '.' if alias else '') ~ citylake_quote(c.name)) -%}
        {%- endfor -%}
        {%- for c in added if c | lower not in columns | map('lower') | list -%}
            {%- do keep.append((alias ~ '.' if alias else '') ~ citylake_quote(c)) -%}
        {%- endfor -%}
        {{ keep | join(', ') }}
    {%- else -%}
        *
    {%- endif -%}
{%- endmacro %}

{% macro citylake_isodow(day) -%}
    {{ return(adapter.dispatch('citylake_isodow', 'citylake')(day)) }}
{%- endmacro %}
{% macro default__citylake_isodow(day) -%}
    isodow({{ day }})
{%- endmacro %}
{% macro spark__citylake_isodow(day) -%}
    ((dayofweek({{ day }}) + 5) % 7 + 1)
{%- endmacro %}

{% macro citylake_days(first_day, last_day) -%}
    {#- after a FROM item (with first_day, last_day): one row per calendar day `day` between them -#}
    {{ return(adapter.dispatch('citylake_days', 'citylake')(first_day, last_day)) }}
{%- endmacro %}
{% macro default__citylake_days(first_day, last_day) -%}
    , range({{ first_day }}, {{ last_day }} + interval 1 day, interval 1 day) as t(day)
{%- endmacro %}
{% macro spark__citylake_days(first_day, last_day) -%}
    {{ ' ' }}lateral view explode(sequence({{ first_day }}, {{ last_day }}, interval 1 day)) t as day
{%- endmacro %}

{% macro citylake_read_parquet(path) -%}
    {{ return(adapter.dispatch('citylake_read_parquet', 'citylake')(path)) }}
{%- endmacro %}
{% macro default__citylake_read_parquet(path) -%}
    read_parquet('{{ path }}')
{%- endmacro %}
{% macro spark__citylake_read_parquet(path) -%}
    parquet.`{{ path }}`
{%- endmacro %}

{% macro citylake_seconds_between(start, end) -%}
    {{ return(adapter.dispatch('citylake_seconds_between', 'citylake')(start, end)) }}
{%- endmacro %}
{% macro default__citylake_seconds_between(start, end) -%}
    date_diff('second', {{ start }}, {{ end }})
{%- endmacro %}
{% macro spark__citylake_seconds_between(start, end) -%}
    (unix_seconds({{ end }}) - unix_seconds({{ start }}))
{%- endmacro %}

{% macro citylake_bronze(source_name, table_name) -%}
    {#- A bronze Delta table (a dbt source, its path in the source's meta.delta_table_path). -#}
    {{ return(adapter.dispatch('citylake_bronze', 'citylake')(source_name, table_name)) }}
{%- endmacro %}
{% macro default__citylake_bronze(source_name, table_name) -%}
    {#- dbt-duckdb's delta plugin registers the table under the source's name -#}
    {{ return(source(source_name, table_name)) }}
{%- endmacro %}
{% macro spark__citylake_bronze(source_name, table_name) -%}
    {#- Sail reads the same Delta table by its path -#}
    {%- set relation = source(source_name, table_name) -%}
    {%- if execute -%}
        {%- for node in graph.sources.values() if node.source_name == source_name and node.name == table_name -%}
            {{ return('delta.`' ~ (node.meta.delta_table_path or node.config.meta.delta_table_path) ~ '`') }}
        {%- endfor -%}
    {%- endif -%}
    {{ return(relation) }}
{%- endmacro %}

{% macro sail__load_csv_rows(model, agate_table) %}
  {#- dbt-spark 1.11 binds a seed's values into the SQL text unescaped: a value with an apostrophe
      breaks the insert and an empty cell becomes the text 'None'. The same insert with each value
      written as a Spark SQL literal: null, a number, or a string with \ and ' escaped. -#}
  {%- set column_override = model['config'].get('column_types', {}) -%}
  {%- set statements = [] -%}
  {%- for chunk in agate_table.rows | batch(get_batch_size()) -%}
    {%- set sql -%}
      insert into {{ this.render() }} values
      {% for row in chunk -%}
        ({%- for col_name in agate_table.column_names -%}
          {%- set type = column_override.get(col_name, adapter.convert_type(agate_table, loop.index0)) -%}
          {%- set value = row[loop.index0] -%}
          {%- if value is none -%}
            cast(null as {{ type }})
          {%- elif value is number and value is not sameas true and value is not sameas false -%}
            cast({{ value }} as {{ type }})
          {%- else -%}
            cast('{{ value | string | replace("\\", "\\\\") | replace("'", "\\'") }}' as {{ type }})
          {%- endif -%}
          {%- if not loop.last %},{% endif -%}
        {%- endfor -%})
        {%- if not loop.last %},{% endif %}
      {% endfor %}
    {%- endset -%}
    {%- do adapter.add_query(sql, abridge_sql_log=True) -%}
    {%- if loop.index0 == 0 -%}{%- do statements.append(sql) -%}{%- endif -%}
  {%- endfor -%}
  {{ return(statements[0]) }}
{% endmacro %}
