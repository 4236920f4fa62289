"""`citylake check`: what a run would fail on, found before the run. Messages never contain a secret's value.

Each source is reached (a connection, a request, the glob listed) and its columns are read cheaply: a
SQL table's or query's columns (`limit 0`), the keys of an API's first page of records, the header of a
drop folder's first file (CSV header, XLSX first row, Parquet schema, the keys of the first JSON
records). Against them, the source's primary_key and cursor must be there by name, and every
`columns:` and `district:` value must bind as it will in the generated staging model: it is compiled
by DuckDB over a table with those columns (text, as bronze holds them), so a column the source does
not have is an error naming the city.yaml key, not a dbt failure minutes into the run. The columns a
source's bronze table already has count too (a key only some records carry is kept from earlier loads).

A drop folder with no file yet is a warning (nothing loads until files arrive); an MQTT source's
columns are known only when messages arrive, so they are not checked.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Sequence

from orchestration.config import CityConfig, ConfigError, Source, pii_key
from orchestration.connectors import redact

#: an http_json probe waits this long unless the source sets timeout_s (its reads wait 30 s by default)
PROBE_TIMEOUT_S = 10

__all__ = ["FAIL", "OK", "WARN", "check_source", "lake_status", "redact", "source_status"]

OK, WARN, FAIL = "ok", "warn", "fail"
#: files read, at most, to find a column the first file's header lacks (files of one drop may differ)
MAX_FILES = 20
#: columns listed in a message, closest to the missing one first
SHOWN_COLUMNS = 40
#: text-only bronze: every column of these sources lands as text, so any binder error is the run's error
_TEXT_FORMATS = ("csv", "json", "jsonl", "xlsx")
_MISSING = re.compile(r'Referenced column "(.+?)" not found')


def lake_status(cfg: CityConfig) -> tuple[str, str]:
    """(OK | FAIL, what was found) for a lake on object storage: its credentials and endpoint (from the
    environment) reach it, and each source's bronze table is read (absent before a first load)."""
    from orchestration import lake

    try:
        opts = lake.storage_options(cfg.lake_root) or {}
        present = sum(lake.open_table(lake.bronze_uri(cfg, s.agency, s.name)) is not None for s in cfg.sources)
    except lake.LakeError as exc:
        return FAIL, str(exc)
    return OK, (
        f"reachable: {present} of {len(cfg.sources)} bronze tables there; commits by conditional put "
        f"({lake.CONDITIONAL_PUT}={opts.get(lake.CONDITIONAL_PUT)})"
    )


def check_source(source: Source, bronze_columns: Sequence[str] = ()) -> tuple[bool, str]:
    """(no error found, what was found or why not); a warning counts as no error. Redacted of every secret."""
    status, detail = source_status(source, bronze_columns)
    return status != FAIL, detail


def source_status(source: Source, bronze_columns: Sequence[str] = ()) -> tuple[str, str]:
    """(OK | WARN | FAIL, what was found: one line per problem), redacted of every secret of the source.

    `bronze_columns`: the columns the source's bronze table already has (the staging model reads bronze)."""
    try:
        if source.personal_data.get("hash"):
            pii_key(source.where)  # the load would fail without it: say so here
        status, detail = _probe(source, bronze_columns)
    except ConfigError as exc:
        return FAIL, redact(str(exc), source)
    except Exception as exc:  # noqa: BLE001 - any driver error: report it, redacted, go on to the next source
        return FAIL, redact(f"{type(exc).__name__}: {exc}", source)
    return status, redact(detail, source)


def _probe(source: Source, bronze: Sequence[str]) -> tuple[str, str]:
    if source.kind in ("sqlite", "postgres", "mysql"):
        from orchestration.connectors.sql import connect, source_query

        conn = connect(source)
        try:
            sql, _ = source_query(source, None)
            cur = conn.cursor()
            cur.execute(f"select * from ({sql}) as probe limit 0")
            names = [d[0] for d in cur.description]
        finally:
            conn.close()
        return _verdict(source, "connected", names, bronze, text_only=False)
    if source.kind == "http_json":
        return _probe_http(source, bronze)
    if source.kind == "files":
        return _probe_files(source, bronze)
    if source.kind == "mqtt":
        import paho.mqtt.client as mqtt

        from orchestration.connectors.mqtt import broker, pending_batches

        b = broker(source)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
        if b["username"]:
            client.username_pw_set(b["username"], b["password"])
        if b["tls"]:
            client.tls_set()
        client.connect(b["host"], b["port"], keepalive=10)
        client.disconnect()
        return OK, (
            f"broker {b['host']}:{b['port']} reachable, {len(pending_batches(source))} batch(es) waiting; "
            "columns not checked (an MQTT source's columns are known only when messages arrive)"
        )
    return FAIL, f"kind {source.kind} has no connector"


def _probe_http(source: Source, bronze: Sequence[str]) -> tuple[str, str]:
    import urllib.error

    from orchestration.connectors.http_json import Client, pagination, read_http_json

    pagination(source)  # a wrong style is a config error worth reporting here
    # the load's own client: http(s) only, redirects checked hop by hop, headers only to the url's origin
    client = Client(source)
    try:
        with client.open(client.url, float(source.raw.get("timeout_s", PROBE_TIMEOUT_S))) as resp:
            reached = f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return FAIL, f"HTTP {exc.code} {exc.reason} from {source.get('url')}"
    # the first page exactly as a load asks for it (its paging parameters), tried once
    once = dataclasses.replace(source, raw={**source.raw, "max_retries": 0})
    first = next(iter(read_http_json(once, None)), None)
    if first is None or first.rows.num_columns == 0:
        return OK, f"{reached}; the first page has no records: columns not checked"
    return _verdict(source, f"{reached}, first page", first.rows.column_names, bronze, text_only=True)


def _probe_files(source: Source, bronze: Sequence[str]) -> tuple[str, str]:
    from orchestration.connectors.files import UnreadableFile, file_columns, list_files

    files = list_files(source)
    if not files:
        return WARN, (
            f"0 files match {source.get('path')}: nothing will load from {source.where}.path until files arrive; "
            "columns not checked"
        )
    found = f"{len(files)} file(s) match {source.get('path')}"
    names: dict[str, None] = {}
    unreadable: list[str] = []
    read = 0
    for path in files[:MAX_FILES]:
        try:
            names.update(dict.fromkeys(file_columns(source, path)))
        except UnreadableFile as exc:
            unreadable.append(f"{path}: {exc}")
            continue
        read += 1
        # the first readable file usually settles it; a later file may bring a column the first lacks
        if not _problems(source, list(names), bronze, source.get("format") in _TEXT_FORMATS):
            break
    if not read:
        return WARN, f"{found}, but none of the first {len(unreadable)} can be read (a run quarantines them): " + (
            unreadable[0]
        )
    return _verdict(source, f"{found}, {read} read", list(names), bronze, source.get("format") in _TEXT_FORMATS)


def _verdict(source: Source, found: str, names: list[str], bronze: Sequence[str], text_only: bool) -> tuple[str, str]:
    problems = _problems(source, names, bronze, text_only)
    if problems:
        return FAIL, "\n".join([f"{found}: {len(names)} columns", *problems])
    bound = ", every columns:/district: value binds" if source.feeds else ""
    return OK, f"{found}: {len(names)} columns, primary key{' and cursor' if _cursor(source) else ''} found{bound}"


def _cursor(source: Source) -> str | None:
    cur = source.get("cursor")
    return cur.get("field") if isinstance(cur, dict) else cur


def _problems(source: Source, names: list[str], bronze: Sequence[str], text_only: bool) -> list[str]:
    """Why a run would fail on these source columns: a key or cursor missing, a value that does not bind."""
    dropped = set(source.personal_data.get("drop") or ())
    kept = [n for n in names if n not in dropped]
    problems = []
    cursor_key = "cursor.field" if isinstance(source.get("cursor"), dict) else "cursor"
    named = [("primary_key", k) for k in source.primary_key]
    if _cursor(source) and source.kind != "files":
        named.append((cursor_key, _cursor(source)))
    for key, column in named:
        if column not in kept:
            problems.append(_missing(source, key, column, kept, dropped))
    if source.feeds:
        problems += _binding_problems(source, [*kept, *(b for b in bronze if b not in dropped)], text_only, dropped)
    return problems


def _mapped(source: Source) -> Iterable[tuple[str, str]]:
    """(city.yaml key under the source, value) of every value the staging model compiles over the source."""
    from orchestration.entities import ENTITIES

    entity = ENTITIES[source.feeds]
    for c in entity.columns:
        if c.name in source.columns:
            yield f"columns.{c.name}", source.columns[c.name]
    method = source.district.get("from")
    parts = ("lat", "lon") if method == "coordinates" else ("column",) if method else ()
    for part in parts:
        yield f"district.{part}", source.district[part]


def _binding_problems(source: Source, names: list[str], text_only: bool, dropped: set[str]) -> list[str]:
    import duckdb

    from orchestration.dbt_build import raw_expression
    from orchestration.ingest import META_COLUMNS

    columns: dict[str, str] = {}
    for n in [*names, *META_COLUMNS]:
        columns.setdefault(n.lower(), n)  # DuckDB names are case-insensitive, as in the staging model
    con = duckdb.connect()
    try:
        ddl = ", ".join(
            f'"{n.replace(chr(34), chr(34) * 2)}" {"timestamptz" if n == "_ingested_at" else "varchar"}'
            for n in columns.values()
        )
        con.execute(f"create table citylake_source ({ddl})")
        problems = []
        for key, value in _mapped(source):
            try:
                con.execute(f"prepare probe as select cast({raw_expression(value)} as varchar) from citylake_source")
            except duckdb.BinderException as exc:
                text = str(exc).removeprefix("Binder Error: ").split("\n")[0]
                missing = _MISSING.search(text)
                if missing:
                    problems.append(_missing(source, key, missing.group(1), names, dropped, value))
                elif text_only:
                    problems.append(
                        f"{source.where}.{key}: {value!r} does not fit the source's columns, which are text: {text}"
                    )
            except duckdb.Error:
                continue  # not the binder's: a function of an extension the warehouse loads, for one
        return problems
    finally:
        con.close()


def _missing(source: Source, key: str, column: str, names: list[str], dropped: set[str], value: str = "") -> str:
    expression = f" (in {value!r})" if value and value.strip('"') != column else ""
    closest = sorted(names, key=lambda n: -difflib.SequenceMatcher(None, column.lower(), n.lower()).ratio())[
        :SHOWN_COLUMNS
    ]
    more = f", ... ({len(names) - SHOWN_COLUMNS} more)" if len(names) > SHOWN_COLUMNS else ""
    why = " (personal_data.drop removes it)" if column in dropped else ""
    return (
        f"{source.where}.{key}: the source has no column {column!r}{expression}{why}; "
        f"its columns, closest first: {', '.join(closest)}{more}"
    )
