"""Publication: marts to Delta under <lake>/marts/, then the analyst catalog swapped in whole.

The catalog is a DuckDB file that any DuckDB client opens without citylake. It is rebuilt from the
just-published Delta marts into a temporary file beside it and renamed over the old one: a reader
sees the old catalog or the new one, never a mix, and a reader holding the old file open keeps
reading it (the rename does not wait for it, and it does not block the rename). If anything fails
before the rename, the previous catalog stays exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from orchestration import lake
from orchestration.config import CityConfig


@dataclass
class Published:
    name: str
    rows: int
    delta_version: int | None


def read_warehouse(cfg: CityConfig, tables: list[str]) -> dict[str, pa.Table]:
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


def _sql_text(value: str | None) -> str:
    return "null" if value is None else "'" + value.replace("'", "''") + "'"


def build_catalog(
    cfg: CityConfig, tables: dict[str, pa.Table], comments: dict[str, dict], info: dict[str, object]
) -> Path:
    """Write every table into a fresh DuckDB file and swap it in as <catalog>; returns its path."""
    target = cfg.catalog_path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        for name, table in tables.items():
            con.register("incoming", table)
            con.execute(f'create table "{name}" as select * from incoming')
            con.unregister("incoming")
            doc = comments.get(name) or {}
            if doc.get("description"):
                con.execute(f'comment on table "{name}" is {_sql_text(doc["description"])}')
            for col, text in (doc.get("columns") or {}).items():
                if text and col in table.column_names:
                    con.execute(f'comment on column "{name}"."{col}" is {_sql_text(text)}')
        con.execute("create table _published (key varchar, value varchar)")
        con.executemany(
            "insert into _published values (?, ?)", [(k, json.dumps(v, default=str)) for k, v in info.items()]
        )
        con.execute("checkpoint")
    except BaseException:
        con.close()
        tmp.unlink(missing_ok=True)
        raise
    con.close()
    os.replace(tmp, target)
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
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
