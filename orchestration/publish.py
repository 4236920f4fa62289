"""Publication: marts to Delta under <lake>/marts/, then the analyst catalog swapped in whole.

The catalog is a DuckDB file that any DuckDB client opens without citylake. It is rebuilt from the
just-published Delta marts (read back at the version this publication committed) into a temporary
file beside it and renamed over the old one: a reader sees the old catalog or the new one, never a
mix, and a reader holding the old file open keeps reading it (the rename neither waits for it nor is
blocked by it: readers lock the old inode, the build writes a different file). If anything fails
before the rename, the previous catalog, and the report beside it, stay exactly as they were.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
from deltalake import DeltaTable

from orchestration import lake
from orchestration.config import CityConfig

#: the indicator report's file name, written beside the catalog at every publication
REPORT_NAME = "indicator_report.html"
#: the DuckDB storage format the catalog is written in: the oldest that DuckDB 1.2 and later (CLI,
#: Python, the JDBC driver of DBeaver and BI tools) read. The duckdb library citylake runs (2.x) writes
#: a newer format by default that no 1.x client opens ("version number 69 ... between 64 and 68").
CATALOG_STORAGE_VERSION = "v1.2.0"

#: descriptions of the catalog tables that are citylake's own rather than dbt models
CATALOG_DOCS: dict[str, dict] = {
    "quarantine": {
        "description": "Every record held back from the lake (bronze: unreadable rows, duplicate keys) or from the "
        "conformed layer (rules broken, or a record another source also delivered: deduplicate in city.yaml), "
        "with the reason. Nothing here reaches the marts.",
        "columns": {
            "layer": "bronze (rejected while loading) or conformed (rejected while conforming).",
            "entity": "The conformed entity the source feeds.",
            "agency": "The agency that owns the source.",
            "source_name": "The source (agencies.<agency>.<source> in city.yaml).",
            "record_key": "The record's primary key, or file:line for a row that could not be read.",
            "reason": "Why the record was held back.",
            "record": "The raw record as JSON (bronze rejects only).",
            "ingested_at": "When the record was loaded.",
        },
    },
    "quarantine_summary": {
        "description": "Held-back records counted by layer, entity, source and reason (the record's own key "
        "replaced by <key>, so one rule broken by many records is one row).",
        "columns": {
            "layer": "bronze (rejected while loading) or conformed (rejected while conforming).",
            "entity": "The conformed entity the source feeds.",
            "agency": "The agency that owns the source.",
            "source_name": "The source (agencies.<agency>.<source> in city.yaml).",
            "reason": "Why the records were held back (a record's own key shown as <key>).",
            "records": "Number of records held back for this reason.",
            "first_ingested_at": "Earliest load of such a record.",
            "last_ingested_at": "Latest load of such a record.",
        },
    },
    "_published": {
        "description": "This publication: city, published_at (UTC), the Dagster run id, and the Delta version "
        "of each mart the catalog was built from; values are JSON.",
    },
}


@dataclass
class Published:
    """One mart as published: its name, row count and the Delta version just committed."""

    name: str
    rows: int
    delta_version: int | None


def read_warehouse(cfg: CityConfig, tables: list[str]) -> dict[str, pa.Table]:
    """The given tables of the dbt warehouse (read-only: dbt may not be writing during publication)."""
    con = duckdb.connect(str(cfg.state_dir / "warehouse.duckdb"), read_only=True)
    try:
        return {t: con.sql(f"select * from {t}").to_arrow_table() for t in tables}
    finally:
        con.close()


def publish_marts(cfg: CityConfig, marts: dict[str, pa.Table]) -> list[Published]:
    """Write each mart as the new version of its Delta table (a full, atomic overwrite)."""
    out = []
    for name, table in marts.items():
        uri = lake.mart_uri(cfg, name)
        lake.replace(uri, table)
        out.append(Published(name, table.num_rows, lake.open_table(uri).version()))
    return out


def read_published(cfg: CityConfig, published: list[Published]) -> dict[str, pa.Table]:
    """Each mart read back from Delta at exactly the version this publication committed.

    The catalog is built from what Delta readers see, not from the warehouse, so the two can never
    disagree (and a concurrent writer of a later version cannot leak into this catalog).
    """
    out = {}
    for p in published:
        uri = lake.mart_uri(cfg, p.name)
        out[p.name] = DeltaTable(
            uri, version=p.delta_version, storage_options=lake.storage_options(uri)
        ).to_pyarrow_table()
    return out


def quarantine_table(cfg: CityConfig, conformed: pa.Table) -> pa.Table:
    """Bronze quarantine (rows that could not be loaded) and conformed rejects, in one table."""
    con = duckdb.connect()
    try:
        con.register("conformed", conformed)
        parts = [
            """select 'conformed' as layer, entity, agency, source_name, record_key,
                           reject_reason as reason, cast(null as varchar) as record, ingested_at
                    from conformed"""
        ]
        for s in cfg.sources:
            t = lake.read_table(lake.quarantine_uri(cfg, s.agency, s.name))
            if t is not None and t.num_rows:
                name = f"q_{s.agency}_{s.name}"
                con.register(name, t)
                parts.append(f"""select 'bronze', cast({_sql_text(s.feeds)} as varchar), agency, source,
                                        coalesce(record_key, location), reason, record, _ingested_at
                                 from {name}""")
        return con.sql(" union all ".join(parts)).to_arrow_table()
    finally:
        con.close()


def quarantine_summary(quarantine: pa.Table) -> pa.Table:
    """Held-back records counted by layer, entity, agency, source and reason."""
    con = duckdb.connect()
    try:
        con.register("quarantine", quarantine)
        # the key is masked so that one rule broken by many records counts as one reason (a duplicate's
        # reason names the kept record's key: masked too); quoted values (an unknown district name, say)
        # stay, because they are what someone has to fix
        return con.sql(
            """select layer, entity, agency, source_name,
                      case when reason like 'duplicate of %(deduplicate.%'
                               then regexp_replace(reason, '^(duplicate of [^ ]+) .* \\(', '\\1 <key> (')
                           when record_key is null or record_key = '' then reason
                           else replace(reason, record_key, '<key>') end as reason,
                      count(*) as records,
                      min(ingested_at) as first_ingested_at,
                      max(ingested_at) as last_ingested_at
               from quarantine
               group by all
               order by layer, agency, source_name, records desc, reason"""
        ).to_arrow_table()
    finally:
        con.close()


def _sql_text(value: str | None) -> str:
    return "null" if value is None else "'" + value.replace("'", "''") + "'"


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporary catalogs left by publications that crashed (their process is gone)."""
    for tmp in target.parent.glob(f".{target.name}.*.tmp*"):
        pid = tmp.name[len(target.name) + 2 :].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: renders files from the finished (not yet swapped-in) catalog: {path: text}
Renderer = Callable[[duckdb.DuckDBPyConnection], dict[Path, str]]


def build_catalog(
    target: Path,
    tables: dict[str, pa.Table],
    comments: dict[str, dict],
    info: dict[str, object],
    render: Renderer | None = None,
) -> Path:
    """Write every table into a fresh DuckDB file and swap it in as `target`; returns its path.

    `render` (the indicator report) reads the new catalog before the swap; its files are swapped in
    right after the catalog, so a failure anywhere leaves the previous catalog and report in place.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    written: dict[Path, Path] = {}
    con = duckdb.connect()
    try:
        con.execute(f"attach {_sql_text(str(tmp))} as catalog (storage_version '{CATALOG_STORAGE_VERSION}')")
        con.execute("use catalog")
        for name, table in tables.items():
            con.register("incoming", table)
            con.execute(f'create table "{name}" as select * from incoming')
            con.unregister("incoming")
        con.execute("create table _published (key varchar, value varchar)")
        con.executemany(
            "insert into _published values (?, ?)", [(k, json.dumps(v, default=str)) for k, v in info.items()]
        )
        for name in [*tables, "_published"]:
            doc = comments.get(name) or CATALOG_DOCS.get(name) or {}
            if doc.get("description"):
                con.execute(f'comment on table "{name}" is {_sql_text(doc["description"])}')
            columns = {c for (c,) in con.execute(f'select column_name from (describe "{name}")').fetchall()}
            for col, text in (doc.get("columns") or {}).items():
                if text and col in columns:
                    con.execute(f'comment on column "{name}"."{col}" is {_sql_text(text)}')
        con.execute("checkpoint")
        for path, text in (render(con) if render else {}).items():
            staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            staged.write_text(text, encoding="utf-8")
            written[path] = staged
    except BaseException:
        con.close()
        tmp.unlink(missing_ok=True)
        for staged in written.values():
            staged.unlink(missing_ok=True)
        raise
    con.close()
    os.replace(tmp, target)
    for path, staged in written.items():
        os.replace(staged, path)
    return target


def dbt_docs(manifest_path: Path, names: list[str]) -> dict[str, dict]:
    """Table and column descriptions of the given models from the dbt manifest."""
    manifest = json.loads(manifest_path.read_text())
    docs = {}
    for node in manifest.get("nodes", {}).values():
        if node.get("name") in names and node.get("resource_type") in ("model", "seed"):
            docs[node["name"]] = {
                "description": node.get("description") or "",
                "columns": {c: v.get("description") for c, v in node.get("columns", {}).items()},
            }
    return docs


def now_utc() -> str:
    """Now, UTC, ISO 8601 to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
