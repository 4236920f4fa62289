"""The per-city dbt project: dbt_project/ plus what city.yaml says, built under <state_dir>/dbt.

citylake's dbt project is shared code; a city adds (1) one staging model per source with `feeds:`,
rendered from its `columns:`, `district:`, `units:` and `timezone:` keys, (2) one union model per
conformed entity, (3) its districts, population and reference data as seeds, (4) a profile pointing at
the city's warehouse file and (5) vars (the city's time zone). Rendering is deterministic; `dbt parse`
runs again only when the rendered project changed.

A hand-written `staging/stg_<agency>__<source>.sql` in the city's folder (beside its city.yaml) takes
over from the generated model for a source too odd for a mapping (it must return the same columns).
The generated models of the reference cities are committed in `cities/<city>/generated/` (`python -m
orchestration.dbt_build --write-generated CONFIG`; tests/test_city_folders.py fails when they are stale).
"""

from __future__ import annotations

import csv
import fcntl
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from orchestration import warm_dbt
from orchestration.config import EARLIEST, CityConfig, Deduplicate, Source
from orchestration.entities import ENTITIES, Entity
from orchestration.keys import key_sql

PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"
GENERATED = Path("models") / "staging" / "_generated"
GENERATED_UNIONS = Path("models") / "intermediate" / "_generated"
CITY_SEEDS = ("city_districts", "city_population")
#: the districts' polygons (code, geometry_wkt), beside the seeds rather than in one: a real city's
#: boundaries (NYC's community districts) exceed the 128 KiB CSV field dbt's seed loader accepts
BOUNDARIES = Path("data") / "city_district_boundaries.parquet"


#: the `sail` target: dbt-sail connected to a running Sail server (Spark Connect) on 127.0.0.1 at
#: $CITYLAKE_SAIL_PORT (orchestration/dbt_sail.py starts one); tables in the schema `citylake` of its catalog
SAIL_PORT_ENV = "CITYLAKE_SAIL_PORT"
SAIL_OUTPUT = {
    "type": "sail",
    "mode": "remote",
    "host": "127.0.0.1",
    "port": "{{ env_var('" + SAIL_PORT_ENV + "', '50051') | as_number }}",
    "schema": "citylake",
    "threads": 1,
    "server_side_parameters": {"spark.sql.session.timeZone": "UTC"},
}

#: the environment variable bounding DuckDB's memory in the pipeline (a DuckDB size, e.g. 2GB)
MEMORY_LIMIT_ENV = "CITYLAKE_DUCKDB_MEMORY_LIMIT"
#: its default: DuckDB's own (80 % of the machine's memory, per connection) let dbt's warehouse hold 4 GB at
#: scale 10 beside the run's own process; under this, the heaviest model ran ~10 % slower (it spills)
DEFAULT_MEMORY_LIMIT = "1GB"


def duckdb_limits() -> dict[str, str]:
    """DuckDB settings of the pipeline's warehouse connections (dbt's, the model gates' read-only ones): at
    most $CITYLAKE_DUCKDB_MEMORY_LIMIT of memory (default DEFAULT_MEMORY_LIMIT), what does not fit spilled
    to DuckDB's temporary folder beside the warehouse (<state_dir>/warehouse.duckdb.tmp). `none` leaves
    DuckDB's own default, 80 % of the machine's memory."""
    limit = os.environ.get(MEMORY_LIMIT_ENV, "").strip() or DEFAULT_MEMORY_LIMIT
    return {} if limit.lower() == "none" else {"memory_limit": limit}


@functools.cache
def unit_factors() -> dict[tuple[str, str], float]:
    """(quantity, source unit) -> factor to the conformed unit, from the unit_conversions seed."""
    with open(PROJECT_DIR / "seeds" / "unit_conversions.csv", newline="") as f:
        return {(r["quantity"], r["from_unit"]): float(r["factor"]) for r in csv.DictReader(f)}


def staging_model_name(source: Source) -> str:
    return f"stg_{source.agency}__{source.name}"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_ ]*$")


def raw_expression(mapping: str, quote=None) -> str:
    """A `columns:` value: a source column name (letters, digits, _ and spaces, as real exports have:
    "Created Date") is quoted (by `quote`, default DuckDB's double quotes); a double-quoted name is kept;
    anything else is a SQL expression (written in DuckDB's dialect: the `sail` target runs it as written)."""
    if _COLUMN.match(mapping):
        return quote(mapping) if quote else '"' + mapping + '"'
    return _with_spark_form(mapping) if quote else mapping


@functools.lru_cache(maxsize=4096)
def _with_spark_form(expression: str) -> str:
    """A city.yaml expression (DuckDB's dialect) in a generated model: as written, and on the `sail`
    target as sqlglot translates it to Spark SQL ("x" is a column in DuckDB, a string in Spark SQL;
    strptime is to_timestamp), chosen when dbt compiles. Kept as written where sqlglot cannot read it
    (the Sail build then fails on it and says so)."""
    import sqlglot

    try:
        spark = sqlglot.transpile(expression, read="duckdb", write="spark")[0]
    except sqlglot.errors.SqlglotError:
        return expression
    if spark == expression or any(t in spark for t in ("{{", "{%", "{#")):  # (never a dbt template)
        return expression
    return f"{{% if target.type == 'sail' %}}{spark}{{% else %}}{expression}{{% endif %}}"


def _q(column: str) -> str:
    """A column name in a generated model: quoted by the target's rule (citylake_quote: "x" in DuckDB,
    `x` in Spark SQL, where "x" is a string)."""
    return "{{ citylake_quote(" + json.dumps(column, ensure_ascii=False) + ") }}"


def _t(sql_type: str) -> str:
    """A type in a generated model, spelled for the target (citylake_type: VARCHAR is Spark's string)."""
    return "{{ citylake_type('" + sql_type.lower() + "') }}"


_TEXT = _t("varchar")


_PARSER_LOCK = threading.Lock()


@functools.cache
def _parser(pid: int):
    """An in-memory DuckDB connection used only to parse expressions (no table, no data), one per process."""
    import duckdb

    return duckdb.connect()


#: scalar functions an expression in city.yaml may not call: they read settings, sequences or the query
#: itself, or write to the log (table functions such as read_csv need a subquery, refused on its own)
_DENIED_FUNCTIONS = {"current_setting", "current_query", "nextval", "currval", "setval", "setseed", "write_log"}
_DENIED_PREFIXES = ("read_", "__internal", "pragma_", "duckdb_", "json_deserialize_sql", "getenv")


@functools.lru_cache(maxsize=4096)
def expression_problem(mapping: str) -> str | None:
    """Why a `columns:`/`district:`/`population_format.code` value cannot go into a model, or None when it can.

    A value is a source column name (quoted by `_expr`) or one scalar SQL expression over the source's
    columns, rendered as `cast(<value> as varchar)`. It is parsed by DuckDB exactly so, and refused when it
    is not one expression (a ';', a second select item, a comment eating the rest), holds a subquery, a
    query parameter or a dbt template (`{{`, `{%`: dbt would run it), or calls a denied function.
    """
    if any(t in mapping for t in ("{{", "{%", "{#")):
        return "holds a dbt template delimiter ({{, {% or {#); write plain SQL"
    if _COLUMN.match(mapping):
        return None
    if len(mapping) > 10_000:
        return "is longer than 10 000 characters"
    sql = f"select cast({raw_expression(mapping)} as varchar) from citylake_source"
    with _PARSER_LOCK:
        tree = json.loads(_parser(os.getpid()).execute("select json_serialize_sql(?::varchar)", [sql]).fetchone()[0])
    if tree.get("error"):
        return f"is not one SQL expression ({tree.get('error_message', 'syntax error')[:200]})"
    statements = tree.get("statements") or []
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    source = node.get("from_table") or {}
    if (
        len(node.get("select_list") or []) != 1
        or source.get("table_name") != "citylake_source"
        or any(node.get(k) for k in ("where_clause", "group_expressions", "having", "qualify", "modifiers"))
    ):
        return "is not one SQL expression over the source's columns"
    stack: list[object] = [node["select_list"]]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            cls = item.get("class")
            if cls == "SUBQUERY":
                return "holds a subquery; an expression reads the source's own row only"
            if cls == "PARAMETER":
                return "holds a query parameter ($1 or ?)"
            fn = str(item.get("function_name", "")).lower() if cls == "FUNCTION" else ""
            if fn in _DENIED_FUNCTIONS or fn.startswith(_DENIED_PREFIXES):
                return f"calls {fn}(), which an expression in city.yaml may not use"
            stack.extend(item.values())
    return None


def render_staging(source: Source, prune: bool = True) -> str:
    """The generated staging model of a source that feeds a conformed entity.

    With `prune` (see window_prunable), a build of a window of days (not every day) dedups only the
    keys that have a version dated in the window (render_window_versions)."""
    entity: Entity = ENTITIES[source.feeds]
    key = key_sql((_q(k) for k in source.primary_key), _TEXT)
    raw_lines = [
        f"        cast({raw_expression(source.columns[c.name], _q)} as {_TEXT}) as {c.name}__raw"
        for c in entity.columns
        if c.name in source.columns
    ]
    typed, reasons = [], []
    for c in entity.columns:
        if c.name not in source.columns:
            typed.append(f"        cast(null as {_t(c.type)}) as {c.name}")
            continue
        raw = f"{c.name}__raw"
        if c.type == "TIMESTAMPTZ":
            value = f"{{{{ citylake_to_utc('{raw}', '{source.timezone}') }}}}"
            readable = value
        else:
            readable = f"try_cast({raw} as {_t(c.type)})"
            value = readable
            unit = source.units.get(c.quantity or c.name)
            if unit:
                factor = unit_factors()[(c.quantity or c.name, unit)]
                value = f"{readable} * {factor!r}" if factor != 1 else readable
        typed.append(f"        {value} as {c.name}")
        if c.required:
            reasons.append(f"case when {raw} is null or trim({raw}) = '' then 'missing {c.name}' end")
        reasons.append(
            f"case when {raw} is not null and trim({raw}) <> '' and {c.name} is null "
            # (chr(39), the apostrophe: '' in a literal is one quote in DuckDB, two adjacent literals in Spark SQL)
            f"then '{c.name}: cannot read ' || chr(39) || {raw} || chr(39) || ' as {c.type.lower()}' end"
        )
        if c.type == "DOUBLE":
            # 'NaN' and 'Infinity' read as doubles; NaN compares above every number in DuckDB
            finite = f"{{{{ citylake_not_finite('{c.name}') }}}}"
            reasons.append(f"case when {finite} then '{c.name} is not a finite number' end")
        if c.min is not None or c.max is not None:
            lo = "-inf" if c.min is None else repr(c.min)
            hi = "inf" if c.max is None else repr(c.max)
            cond = " or ".join(
                p
                for p in (
                    f"{c.name} < {c.min!r}" if c.min is not None else "",
                    f"{c.name} > {c.max!r}" if c.max is not None else "",
                )
                if p
            )
            reasons.append(f"case when {cond} then '{c.name} out of range [{lo}, {hi}]: ' || {c.name} end")
    method = source.district.get("from")
    if method == "coordinates":
        district = [
            f"        cast(null as {_TEXT}) as district_value",
            *(
                f"        try_cast(cast({raw_expression(source.district[a], _q)} as {_TEXT}) as double) as district_{a}"
                for a in ("lat", "lon")
            ),
        ]
    else:
        column = raw_expression(source.district["column"], _q) if method else ""
        value = f"nullif(trim(cast({column} as {_TEXT})), '')" if method else "null"
        district = [
            f"        cast({value} as {_TEXT}) as district_value",
            "        cast(null as double) as district_lat",
            "        cast(null as double) as district_lon",
        ]
    sep = ",\n"
    cols = sep.join(f"        {c.name}" for c in entity.columns)
    reason_sql = ",\n            ".join(reasons) or "null"
    mapped_cols = sep.join(district + raw_lines)
    typed_cols = sep.join(typed)
    return f"""-- Generated by citylake from {source.where} in city.yaml. Do not edit: change city.yaml, or
-- write staging/{staging_model_name(source)}.sql beside city.yaml to take over this source.
{{% set bronze = citylake_bronze('bronze_{source.agency}', '{source.name}') %}}
with source as (

    select * from {{{{ bronze }}}}

),

{render_window_versions(source, entity) if prune else render_latest(source)}mapped as (

    select
        {key} as record_key,
        _ingested_at as ingested_at,
{mapped_cols}
    from latest

),

typed as (

    select
        *,
{typed_cols}
    from mapped

),

final as (

    select
        {_sql_str(source.agency)} as agency,
        {_sql_str(source.name)} as source_name,
        record_key,
        ingested_at,
{cols},
        {_sql_str(method or "none")} as district_method,
        district_value,
        district_lat,
        district_lon,
        coalesce(
            {reason_sql}
        ) as reject_reason
    from typed

)

select * from final
"""


_LATEST_COMMENT = """    -- a key delivered again (a corrected file, an updated row) supersedes its earlier version; two
    -- copies loaded at one instant (two files of one run): the one from the later file path"""


def _numbered_latest(keys: list[str], rows: str) -> str:
    """The latest version of each key among `rows` (a FROM clause), by ordering each key's versions."""
    return f"""select * from (
        select *, row_number() over (
            partition by {", ".join(keys)} order by _ingested_at desc, _source_file desc nulls last
        ) as _citylake_version
        from {rows}
    ) as numbered
    where _citylake_version = 1"""


def render_latest(source: Source) -> str:
    """The `repeated` and `latest` CTEs of a staging model that reads bronze whole: the keys delivered
    once are taken as they are, and only the versions of the keys delivered more than once are ordered.
    The same rows as ordering every key's versions, at a third of the cost for a table whose keys mostly
    come once (4.1M air readings: 3.5 s to 1.0 s in DuckDB): a window over every row carries every column
    through its sort. Each part names the bronze view itself, not a CTE, which DuckDB would materialize
    whole for being read more than once."""
    keys = [_q(k) for k in source.primary_key]
    match = " and ".join(f"repeated.{k} is not distinct from versions.{k}" for k in keys)
    repeated = f"{{{{ bronze }}}} as versions\n        where exists (select 1 from repeated where {match})"
    return f"""repeated as (

    -- the keys delivered more than once
    select {", ".join(keys)} from {{{{ bronze }}}}
    group by {", ".join(keys)}
    having count(*) > 1

),

latest as (

{_LATEST_COMMENT}
    select *, 1 as _citylake_version from {{{{ bronze }}}} as versions
    where not exists (select 1 from repeated where {match})
    union all
    {_numbered_latest(keys, repeated)}

),

"""


def window_prunable(entity: Entity, rule: Deduplicate | None) -> bool:
    """Whether a window build may read only the keys dated in the window for the entity's sources.

    Without a `deduplicate:` rule each record's outcome depends on its key's versions only. With one,
    a record's `duplicate_of` depends on the other records of its match group; the group lies within
    one day when the rule matches on the entity's time column (equal times, equal days: the group is
    whole in the window or wholly outside it), else it may span days and the sources are read whole."""
    return rule is None or entity.time in rule.match


def render_window_versions(source: Source, entity: Entity) -> str:
    """The `latest` CTE of a staging model: from every bronze row (render_latest), or in a build of a
    window of days (vars min_date/max_date not every day, see citylake_is_window) from only the rows of
    the keys that have a version whose day (citylake_partition_date of its time column as the model
    reads it, else of its arrival) is in the window. Every version of such a key is kept (a semi-join,
    not a filter of rows), so the latest-version dedup sees the same versions as in a full build; a key
    whose latest version lies outside the window is dropped by the union's exact window filter, as
    before. A day is computed from the time text and the arrival only, so each distinct pair of them
    is dated once (35 thousand pairs for 4.1M air readings: 0.6 s to 0.03 s per air source at
    scale 10) and the keys are found by a semi-join on the pair.

    Every read names the one view dbt-duckdb makes of the Delta table (`bronze`, set once: each
    source() call loads the table again), so they read one version of it; a CTE read twice would
    be materialized whole by DuckDB instead."""
    keys = [_q(k) for k in source.primary_key]
    time = entity.column(entity.time)
    dated_by, time_text = ["_ingested_at"], ""  # what a version's day is computed from
    raw = ""
    event_date = "'cast(null as date)'"  # (a Jinja string: the SQL of the event's city-local date)
    if entity.time in source.columns:
        dated_by.append("_time__raw")
        time_text = f"cast({raw_expression(source.columns[entity.time], _q)} as {_TEXT})"
        raw = f",\n            {time_text} as _time__raw"
        if time.type == "TIMESTAMPTZ":
            event_date = f"citylake_local_date(citylake_to_utc('_time__raw', '{source.timezone}'))"
        elif time.type == "DATE":
            event_date = "'try_cast(_time__raw as DATE)'"
        else:  # pragma: no cover - every entity's time is a DATE or a TIMESTAMPTZ
            raise ValueError(f"{entity.name}.{entity.time}: a {time.type} cannot date a partition")
    day = f"citylake_partition_date({event_date}, '_ingested_at')"
    on = "\n        and ".join(f"source.{k} is not distinct from window_keys.{k}" for k in keys)
    dated_on = "\n            and ".join(f"stamped.{c} is not distinct from dated.{c}" for c in dated_by)
    return f"""{{% if citylake_is_window() %}}
dated as (

    -- a version's day depends only on its time text and its arrival: each distinct pair is dated once,
    -- not each row (a reading per station and hour shares its pair with every other station's)
    select {", ".join(dated_by)} from (
        select
            _ingested_at{raw},
            count(*) as _versions
        from {{{{ bronze }}}}
        group by _ingested_at{", " + time_text if time_text else ""}
    )
    -- (the day is tested through _versions: a test of the grouped columns alone is pushed by DuckDB's
    -- optimizer below the grouping, where it dates every row again, 0.6 s instead of 0.03 s)
    where case when _versions > 0 then {{{{ citylake_window({day}) }}}} end

),

window_keys as (

    -- a build of some days reads the keys with a version dated in them (citylake_partitions.sql)
    select distinct {", ".join(keys)}
    from (
        select
            {", ".join(keys)},
            _ingested_at{raw}
        from {{{{ bronze }}}}
    ) as stamped
    semi join dated
        on {dated_on}

),

versions as (

    -- and every version of those keys: the latest one decides the record's day
    select source.* from source
    semi join window_keys
        on {on}

),

latest as (

{_LATEST_COMMENT}
    {_numbered_latest(keys, "versions")}

),
{{%- else %}}
{render_latest(source).rstrip()}
{{%- endif %}}

"""


def render_union(entity: Entity, sources: list[Source], rule: Deduplicate | None = None) -> str:
    """All staging models feeding one entity, stacked (an empty typed relation when none does), each
    record with `duplicate_of` (see render_deduplicate) and dated to its daily partition; a build keeps
    the records of its partition window."""
    if sources:
        parts = "\n\n{{ citylake_union_all_by_name() }}\n\n".join(
            f"select * from {{{{ ref('{staging_model_name(s)}') }}}}" for s in sources
        )
        body = render_deduplicate(parts, rule, entity)
        head = f"-- Generated by citylake: every source in city.yaml that feeds {entity.name}."
    else:
        cols = ",\n".join(f"    cast(null as {_t(c.type)}) as {c.name}" for c in entity.columns)
        body = f"""select
    cast(null as {_TEXT}) as agency,
    cast(null as {_TEXT}) as source_name,
    cast(null as {_TEXT}) as record_key,
    cast(null as {_t("timestamptz")}) as ingested_at,
{cols},
    cast(null as {_TEXT}) as district_method,
    cast(null as {_TEXT}) as district_value,
    cast(null as double) as district_lat,
    cast(null as double) as district_lon,
    cast(null as {_TEXT}) as reject_reason,
    cast(null as {_TEXT}) as duplicate_of
where false"""
        head = f"-- Generated by citylake: no source in city.yaml feeds {entity.name}."
    time = entity.column(entity.time)
    event_date = entity.time if time.type == "DATE" else f"{{{{ citylake_local_date('{entity.time}') }}}}"
    return f"""{head}
with unioned as (

{body}

),

dated as (

    select
        {union_columns(entity, ("reject_reason",))},
        event_date,
        {{{{ citylake_partition_date('event_date', 'ingested_at') }}}} as partition_date,
        coalesce(reject_reason, {{{{ citylake_time_reject_reason('{entity.time}', 'event_date') }}}})
            as reject_reason
    from (select *, {event_date} as event_date from unioned) as with_event_date

)

select {union_columns(entity, ("reject_reason",))}, partition_date, reject_reason from dated
where {{{{ citylake_window() }}}}
"""


def union_columns(entity: Entity, drop: tuple[str, ...] = ()) -> str:
    """The columns every staging model of `entity` returns (render_staging's `final`), in order, and
    the union's duplicate_of: listed rather than `* exclude (...)`, which Spark SQL lacks."""
    names = [
        "agency",
        "source_name",
        "record_key",
        "ingested_at",
        *(c.name for c in entity.columns),
        "district_method",
        "district_value",
        "district_lat",
        "district_lon",
        "reject_reason",
        "duplicate_of",
    ]
    return ", ".join(n for n in names if n not in drop)


def render_deduplicate(union: str, rule: Deduplicate | None, entity: Entity | None = None) -> str:
    """`union` (a select stacking an entity's sources) with `duplicate_of`: null, or for a record another
    source also delivered (`deduplicate.<entity>` in city.yaml), the kept record as 'agency/source key'.

    Records with equal `match` values are one group; the group's first record in the rule's order
    (`prefer`, then unlisted sources, then latest ingested, then key) is kept, and so is every record of
    its source (within a source the primary key, not this rule, says what a duplicate is). A record
    already rejected, or with a null match value, is never matched. Nothing is removed here: the facts
    skip `duplicate_of is not null` and quarantine_records lists it with the reason."""
    if rule is None:
        text = _TEXT if entity else "varchar"
        return f"select *, cast(null as {text}) as duplicate_of from (\n\n{union}\n\n) as sources\n"
    source = "agency || '/' || source_name"
    rank = " ".join(f"when {_sql_str(key)} then {i}" for i, key in enumerate(rule.prefer))
    order = f"case {source} {rank} else {len(rule.prefer)} end, " if rule.prefer else ""
    matchable = " and ".join(["reject_reason is null", *(f"{c} is not null" for c in rule.match)])
    columns = ", ".join(rule.match)
    # (without `entity`, a union of any columns, in DuckDB only: tests/test_dedupe.py runs it on its own rows)
    kept = union_columns(entity, ("duplicate_of",)) if entity else "* exclude (_matchable, _kept_source, _kept_record)"
    return f"""with unioned as (

{union}

),

matchable as (

    select *, {matchable} as _matchable from unioned

),

grouped as (

    -- deduplicate.{rule.entity} in city.yaml: records with equal {columns} are one
    select
        *,
        first_value({source}) over kept as _kept_source,
        first_value({source} || ' ' || record_key) over kept as _kept_record
    from matchable
    window kept as (
        partition by _matchable, {columns}
        order by {order}ingested_at desc, {source}, record_key
    )

)

select
    {kept},
    case when _matchable and {source} <> _kept_source then _kept_record end as duplicate_of
from grouped
"""


def render_sources(cfg: CityConfig) -> dict:
    """dbt's sources: one per agency, a table per bronze Delta table (its path in meta.delta_table_path).
    A lake on object storage is read through dbt-duckdb's delta plugin (each build registers the tables'
    Arrow datasets); a local lake's tables are views in the warehouse over their Parquet files
    (`bronze_views`, refreshed before every dbt build)."""
    by_agency: dict[str, list[Source]] = {}
    for s in cfg.sources:
        by_agency.setdefault(s.agency, []).append(s)
    from orchestration import lake

    sources = []
    for agency, srcs in by_agency.items():
        tables = []
        for s in srcs:
            uri = lake.bronze_uri(cfg, agency, s.name)
            meta = {"delta_table_path": uri}
            if lake.storage_options(uri):
                meta["storage_options"] = lake.storage_options(uri)
            tables.append({"name": s.name, "description": f"Bronze Delta table of {s.where} ({s.kind}).", "meta": meta})
        sources.append(
            {
                "name": f"bronze_{agency}",
                "description": f"Bronze tables of the {agency} agency.",
                **({} if native_bronze(cfg) else {"meta": {"plugin": "delta"}}),
                "tables": tables,
            }
        )
    return {"version": 2, "sources": sources}


def native_bronze(cfg: CityConfig) -> bool:
    """Whether dbt reads bronze through views in the warehouse (a lake on local disk) rather than through
    dbt-duckdb's delta plugin (a lake on object storage: DuckDB cannot read s3:// without its httpfs
    extension, which cannot be installed offline)."""
    return "://" not in str(cfg.lake_path("bronze"))


#: marks a bronze view as made from one Delta table version (its comment): an unchanged table's view is kept
#: what a view was made from: the table (its Delta id, new when a table is deleted and loaded again, whose
#: versions then count from 0 again) and its version
BRONZE_VIEW_MARK = "citylake bronze view 2: {uri} (table {id}) @ version {version}"


def bronze_views(cfg: CityConfig) -> None:
    """Point each `bronze_<agency>.<source>` view of the warehouse at its Delta table's current Parquet files
    (from the Delta log), read by DuckDB's own Parquet reader: it scans in DuckDB's memory, under its
    memory limit, where the delta plugin's Arrow dataset scan kept about a gigabyte of Arrow buffers
    beside it at scale 10, and prunes row groups by their statistics. Every column of the Delta schema
    is there with its Delta type (a column of no file yet is null). Called before every build of the
    daily models (the only ones reading bronze); a table whose Delta version is the one its view was made
    from keeps its view (no file footers read), unless the table was deleted and loaded again since. A
    view is the table as of the last refresh (an older Delta version, never a mix), so a `dbt build` run
    by hand after a load reads the earlier snapshot until citylake's next build."""
    if not native_bronze(cfg):
        return

    from orchestration import lake
    from orchestration.quality import quote, warehouse_when_free

    # (another run's model gate may be reading: wait for it, as dbt's step after this one could not)
    with warehouse_when_free(cfg.state_dir / "warehouse.duckdb", read_only=False) as con:
        made = {
            (r[0], r[1]): r[2]
            for r in con.execute(
                "select schema_name, view_name, comment from duckdb_views() where database_name = current_database()"
            ).fetchall()
        }
        for s in cfg.sources:
            uri = lake.bronze_uri(cfg, s.agency, s.name)
            table = lake.open_table(uri)
            if table is None:
                continue
            mark = BRONZE_VIEW_MARK.format(uri=uri, id=table.metadata().id, version=table.version())
            if made.get((f"bronze_{s.agency}", s.name)) == mark:
                continue
            schema, name = quote(f"bronze_{s.agency}"), quote(s.name)
            con.execute(f"create schema if not exists {schema}")
            kind = con.execute(
                "select table_type from information_schema.tables where table_schema = ? and table_name = ?",
                [f"bronze_{s.agency}", s.name],
            ).fetchall()
            if kind and kind[0][0] != "VIEW":
                con.execute(f"drop table {schema}.{name}")
            con.execute(f"create or replace view {schema}.{name} as {lake.parquet_select(con, table)}")
            con.execute(f"comment on view {schema}.{name} is {_sql_str(mark)}")


def _district_rows(cfg: CityConfig) -> list[dict]:
    from shapely.geometry import shape

    with open(cfg.boundaries, encoding="utf-8") as f:
        fc = json.load(f)
    rows = []
    for i, feat in enumerate(fc.get("features", [])):
        props = feat.get("properties") or {}
        if cfg.code_property not in props:
            raise ValueError(
                f"{cfg.boundaries}: feature {i} has no property '{cfg.code_property}'; set "
                f"districts.code_property to the property that holds the district code"
            )
        geom = shape(feat["geometry"])
        lat0 = math.radians(geom.centroid.y)
        # local equirectangular projection: good to well under 1 % at city scale
        km2 = geom.area * 111.32 * math.cos(lat0) * 110.574
        rows.append(
            {
                "code": str(props[cfg.code_property]).strip(),
                "name": str(props.get(cfg.name_property) or props[cfg.code_property]).strip(),
                "area_km2": round(km2, 4),
                "geometry_wkt": geom.wkt,
            }
        )
    return rows


def districts_status(cfg: CityConfig) -> tuple[bool, str]:
    """(readable, what) of the boundary file and the population table, read as a build reads them: a
    wrong column or property fails `citylake check`, not the run's dbt step."""
    try:
        districts = _district_rows(cfg)
        population = population_rows(cfg)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, str(exc)
    codes = {d["code"] for d in districts}
    counted = {r["code"] for r in population}
    years = sorted({str(r["year"]) for r in population})
    span = f" ({years[0]}..{years[-1]})" if years else ""
    return True, (
        f"{len(districts)} districts ({cfg.code_property}), population of {len(counted & codes)} of them{span}"
    )


def population_rows(cfg: CityConfig) -> list[dict]:
    """districts.population as (code, population, year) rows: as delivered, or read from a census table as
    published: wide, unpivoted (`districts.population_format: {layout: wide, code, year_columns}`), or long
    under its own column names (`{layout: long, code, population, year}`), so a city can point at its
    statistics office's file instead of keeping a hand-converted copy."""
    fmt = cfg.population_format
    if not fmt:
        with open(cfg.population, newline="", encoding="utf-8-sig") as f:
            pop = list(csv.DictReader(f))
        if pop and not {"code", "population", "year"} <= set(pop[0]):
            raise ValueError(
                f"districts.population: {cfg.population} needs columns code, population, year; it has "
                f"{', '.join(pop[0])} (a table with other column names, or one column per census year, needs "
                "districts.population_format)"
            )
        return [{k: r[k] for k in ("code", "population", "year")} for r in pop]
    import duckdb

    where = "districts.population_format"
    con = duckdb.connect()
    try:
        src = con.read_csv(str(cfg.population), header=True, all_varchar=True)
        con.register("population_source", src)
        numbered = "(select *, row_number() over () as _citylake_row from population_source)"
        if fmt["layout"] == "long":
            rows = _long_population(cfg, con, src, numbered)
        else:
            code = f"nullif(trim(cast({raw_expression(fmt['code'])} as varchar)), '') as code"
            pattern = re.compile(fmt["year_columns"])
            years = {c: m.group(1) for c in src.columns if (m := pattern.search(c))}
            if not years:
                raise ValueError(
                    f"{where}.year_columns: no column of {cfg.population} matches '{fmt['year_columns']}'; "
                    f"its columns are {', '.join(src.columns)}"
                )
            # one select per census-year column; thousands separators ("1,234") are common in census tables
            parts = [
                f"select _citylake_row as source_row, {code}, "
                f"{_sql_str(year)} as year, nullif(trim({_quote(col)}), '') as population_text from {numbered}"
                for col, year in years.items()
            ]
            try:
                rows = con.sql(" union all ".join(parts) + " order by source_row, year").fetchall()
            except duckdb.Error as exc:
                raise ValueError(
                    f"{where}.code: '{fmt['code']}' cannot be evaluated over {cfg.population}: {exc}"
                ) from None
    finally:
        con.close()
    out = []
    for source_row, code, year, text in rows:
        if text is None:
            continue  # no census of this district in this year
        if code is None:
            raise ValueError(f"{where}.code: gives no district code for data row {source_row} of {cfg.population}")
        try:
            population = int(float(text.replace(",", "")))
        except ValueError:
            raise ValueError(
                f"districts.population: '{text}' in data row {source_row} ({year}) of {cfg.population} is not a number"
            ) from None
        out.append({"code": code, "population": population, "year": year})
    return out


def _long_population(cfg: CityConfig, con, src, numbered: str) -> list[tuple]:
    """(source row, code, year, population text) of a long census table, each of `population_format`'s
    code, population and year a column or SQL expression over its columns; a year must be four digits."""
    import duckdb

    fmt, where = cfg.population_format, "districts.population_format"
    text = {k: f"nullif(trim(cast({raw_expression(fmt[k])} as varchar)), '')" for k in ("code", "population", "year")}
    for key in text:  # each evaluated alone first, so that an error names its key
        try:
            con.sql(f"select {text[key]} from population_source limit 0").fetchall()
        except duckdb.Error as exc:
            raise ValueError(
                f"{where}.{key}: '{fmt[key]}' cannot be evaluated over {cfg.population} (its columns: "
                f"{', '.join(src.columns)}): {str(exc).splitlines()[0]}"
            ) from None
    rows = con.sql(
        f"select _citylake_row, {text['code']}, {text['year']}, {text['population']} from {numbered} "
        "order by _citylake_row"
    ).fetchall()
    for source_row, _, year, population in rows:
        if population is not None and (year is None or not re.fullmatch(r"\d{4}", year)):
            raise ValueError(
                f"{where}.year: '{year}' in data row {source_row} of {cfg.population} is not a year (four digits)"
            )
    return rows


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _write_csv(path: Path, rows: list[dict], header: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _write_boundaries(path: Path, districts: list[dict]) -> None:
    """The districts' polygons as Parquet (code, geometry_wkt), read by dim_district."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "code": pa.array([d["code"] for d in districts], pa.string()),
            "geometry_wkt": pa.array([d["geometry_wkt"] for d in districts], pa.string()),
        }
    )
    # plain columns (no statistics, no Arrow schema blob): the same districts give the same bytes, so the
    # project's fingerprint (and the skipped `dbt parse`) holds across runs
    pq.write_table(table, path, write_statistics=False, store_schema=False)


def build_project(cfg: CityConfig) -> Path:
    """Render the city's dbt project under <state_dir>/dbt and parse it when it changed.

    The project is rendered aside and synced in under a lock, writing only files whose content
    changed: a run building concurrently from the same project never sees a file disappear."""
    out = cfg.state_dir / "dbt"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cfg.state_dir, prefix=".dbt-render-") as tmp:
        _render(cfg, Path(tmp), out)
        with open(cfg.state_dir / "dbt.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _sync(Path(tmp), out)
            parse_if_changed(out)
    return out


def _sync(src: Path, dst: Path) -> None:
    """Make dst's rendered files equal src's, touching only what differs (dbt's target/ is kept)."""
    wanted = {p.relative_to(src) for p in src.rglob("*") if p.is_file()}
    for rel in sorted(wanted):
        target = dst / rel
        data = (src / rel).read_bytes()
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
    for p in sorted(_rendered(dst, skip=("target", "logs", "dbt_packages"), folders=True), reverse=True):
        rel = p.relative_to(dst)
        if p.name == "dbt.lock":
            continue
        if p.is_file() and rel not in wanted:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def _rendered(project: Path, skip: tuple[str, ...], folders: bool = False) -> Iterator[Path]:
    """The files (and with `folders`, the folders) under `project`, except those under its top-level
    folders named in `skip` (dbt's output: target/ alone holds thousands of files, one folder of compiled
    SQL per dbt step kept, which were walked on every load of the definitions)."""
    for here, dirs, files in os.walk(project):
        if here == str(project):
            dirs[:] = [d for d in dirs if d not in skip]
        if folders:
            yield from (Path(here) / d for d in dirs)
        yield from (Path(here) / f for f in files)


def _render(cfg: CityConfig, out: Path, final: Path) -> None:
    """Write the city's project into `out`; paths inside it point at `final`, where it will live."""
    for sub in ("models", "seeds", "macros", "tests"):
        if (PROJECT_DIR / sub).exists():
            shutil.copytree(PROJECT_DIR / sub, out / sub)
    project = yaml.safe_load((PROJECT_DIR / "dbt_project.yml").read_text())
    project["vars"] = {
        **project["vars"],
        "partitions_start": (cfg.partitions_start or EARLIEST).isoformat(),
        "city_timezone": cfg.timezone,
        "city_name": cfg.name,
        "city_district_boundaries": str(final / BOUNDARIES),
    }
    (out / "dbt_project.yml").write_text(yaml.safe_dump(project, sort_keys=False))
    profile = {
        "citylake": {
            "target": "city",
            "outputs": {
                "city": {
                    "type": "duckdb",
                    "path": str(cfg.state_dir / "warehouse.duckdb"),
                    "threads": 1,
                    "plugins": [{"module": "delta"}],
                    "settings": {"TimeZone": "UTC", **duckdb_limits()},
                },
                # `--target sail`: the same models on a Sail server over the same bronze Delta tables
                # (orchestration/dbt_sail.py, docs/deploy.md "dbt on a cluster engine (Sail)")
                "sail": SAIL_OUTPUT,
            },
        }
    }
    (out / "profiles.yml").write_text(yaml.safe_dump(profile, sort_keys=False))

    seeds = out / "seeds"
    districts = _district_rows(cfg)
    _write_csv(seeds / "city_districts.csv", districts, ["code", "name", "area_km2"])
    _write_boundaries(out / BOUNDARIES, districts)
    _write_csv(seeds / "city_population.csv", population_rows(cfg), ["code", "population", "year"])
    for name, path in cfg.reference_data.items():
        shutil.copyfile(path, seeds / f"{name}.csv")

    gen = out / GENERATED
    gen.mkdir(parents=True, exist_ok=True)
    (gen / "_generated__sources.yml").write_text(yaml.safe_dump(render_sources(cfg), sort_keys=False))
    feeding: dict[str, list[Source]] = {e: [] for e in ENTITIES}
    for s in cfg.sources:
        if not s.feeds:
            continue
        feeding[s.feeds].append(s)
        hand = hand_written_staging(s)
        if hand.exists():
            (out / "models" / "staging" / s.agency).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hand, out / "models" / "staging" / s.agency / hand.name)
        else:
            (gen / f"{staging_model_name(s)}.sql").write_text(render_staging(s, prunable(cfg, s)))
    unions = out / GENERATED_UNIONS
    unions.mkdir(parents=True, exist_ok=True)
    for name, entity in ENTITIES.items():
        (unions / f"int_{name}__unioned.sql").write_text(render_union(entity, feeding[name], cfg.deduplicate.get(name)))


def prunable(cfg: CityConfig, source: Source) -> bool:
    return window_prunable(ENTITIES[source.feeds], cfg.deduplicate.get(source.feeds))


def hand_written_staging(source: Source) -> Path:
    """Where a city's own staging model of `source` would be: staging/ in the city's folder."""
    return source.base_dir / "staging" / f"{staging_model_name(source)}.sql"


def write_generated(cfg: CityConfig, folder: Path) -> list[Path]:
    """The generated staging model of each of the city's sources that feeds an entity and has no
    hand-written one, written to `folder` (the committed copies in cities/<city>/generated/)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for s in cfg.sources:
        if s.feeds and not hand_written_staging(s).exists():
            path = folder / f"{staging_model_name(s)}.sql"
            path.write_text(render_staging(s, prunable(cfg, s)))
            written.append(path)
    return written


def _fingerprint(project: Path) -> str:
    h = hashlib.sha256()
    # dbt's own output (target/, logs/) is not part of what was rendered
    for p in sorted(p for p in _rendered(project, skip=("target", "logs")) if p.is_file()):
        h.update(str(p.relative_to(project)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _parse_stamp(project: Path) -> Path:
    """The fingerprint of the project as last parsed (`parse_if_changed`)."""
    return project / "target" / ".fingerprint"


def parsed(cfg: CityConfig) -> bool:
    """Whether the city's dbt project was parsed before (by `build_project`)."""
    return _parse_stamp(cfg.state_dir / "dbt").is_file()


def parse_if_changed(project: Path) -> None:
    """Write target/manifest.json (what dagster-dbt loads) unless the project is unchanged."""
    stamp = _parse_stamp(project)
    fp = _fingerprint(project)
    if stamp.exists() and (project / "target" / "manifest.json").exists() and stamp.read_text() == fp:
        return
    dbt_env()
    args = ["parse", "--quiet", "--project-dir", str(project), "--profiles-dir", str(project)]
    if warm_dbt.start():  # in a run: parse in its warm dbt server (which the dbt steps use next), not here
        proc = subprocess.run([warm_dbt.executable(), *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            said = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise RuntimeError(f"dbt parse failed for {project} (exit status {proc.returncode}):\n{said}")
    else:
        from dbt.cli.main import dbtRunner

        res = dbtRunner().invoke(args)
        if not res.success:
            raise RuntimeError(f"dbt parse failed for {project}: {res.exception}")
    stamp.write_text(fp)


#: dbt artifact folders kept per dbt step: dagster-dbt gives every invocation its own target folder
#: (`target/<step>-<run id>-<random>`: compiled SQL, run_results.json; ~5 MB for the reference city), and
#: nothing removed them: a city built hourly piled up ~100 GB a year. The newest KEPT_TARGETS of each step
#: stay for whoever looks into a recent run; older ones are deleted when the step runs again
#: (docs/operations.md, "dbt in a run").
KEPT_TARGETS = 5
#: a folder younger than this is never deleted (another process's dbt may be writing it)
TARGET_MIN_AGE_S = 3600.0


def prune_targets(
    target: Path, step: str | None = None, keep: int = KEPT_TARGETS, min_age_s: float = TARGET_MIN_AGE_S
) -> list[Path]:
    """Delete the dbt invocation folders in `target` beyond the newest `keep` of each step (the name before
    `-<run id>-<random>`; only `step`'s when given) and older than `min_age_s`; returns what was deleted.
    The project's own files there (manifest.json, partial_parse.msgpack) are not folders of that shape."""
    steps: dict[str, list[tuple[float, Path]]] = {}
    for folder in target.glob("*-*-*") if target.is_dir() else ():
        name, run, rand = folder.name.rsplit("-", 2)
        if folder.is_dir() and len(run) == 7 and len(rand) == 7 and step in (None, name):
            steps.setdefault(name, []).append((folder.stat().st_mtime, folder))
    now, gone = time.time(), []
    for folders in steps.values():
        for mtime, folder in sorted(folders, reverse=True)[keep:]:
            if now - mtime >= min_age_s:
                shutil.rmtree(folder, ignore_errors=True)
                gone.append(folder)
    return gone


def dbt_env() -> None:
    """No network at run time: dbt's anonymous usage stats off."""
    os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    os.environ.setdefault("DBT_NO_VERSION_CHECK", "true")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Tools for a city's dbt project (citylake runs dbt itself)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--write-generated", metavar="CONFIG", help="write the city's generated staging models to <city>/generated/"
    )
    what.add_argument(
        "--bronze-views",
        metavar="CONFIG",
        help="point the warehouse's bronze views at the lake's current files (before a `dbt build` run by hand)",
    )
    args = parser.parse_args()
    from orchestration.config import load_config

    if args.bronze_views:
        bronze_views(load_config(args.bronze_views))
    else:
        config = load_config(args.write_generated)
        for path in write_generated(config, config.base_dir / "generated"):
            print(path)
