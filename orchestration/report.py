"""The short printed summary `citylake demo` ends with: the latest indicators and how to query them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import duckdb

from orchestration.config import CityConfig


def summary(cfg: CityConfig) -> str:
    con = duckdb.connect(str(cfg.catalog_path), read_only=True)
    try:
        latest = con.execute("select max(period_start) from indicators where period_grain = 'month'").fetchone()[0]
        rows = con.execute(
            """select indicator_id, indicator_name, value, unit, coverage from indicators
               where area_id = 'CITY' and period_grain = 'month' and period_start = ?
               order by indicator_id""",
            [latest],
        ).fetchall()
        counts = con.execute("select count(*), count(distinct area_id) from indicators").fetchone()
        quarantined = con.execute("select count(*) from quarantine").fetchone()[0]
    finally:
        con.close()
    lines = [f"{cfg.name}: citywide indicators for {latest:%B %Y}", ""]
    for ind, name, value, unit, coverage in rows:
        lines.append(f"  {ind:<30} {value:>12.4g}  {unit:<30} coverage {coverage:.0%}  {name}")
    lines += [
        "",
        f"{counts[0]:,} indicator rows over {counts[1]} areas; {quarantined:,} records held in quarantine.",
        f"Analyst catalog (read-only DuckDB): {cfg.catalog_path}",
        f"Delta marts: {cfg.lake_path('marts')}/",
        "",
        "Query it:",
        f'  {_command()} sql "select area_id, period_start, value from indicators '
        "where indicator_id = 'iso37120_8_1' and period_grain = 'month' order by 1, 2\"",
        f"  {_duckdb_cli()} -readonly {cfg.catalog_path}   # any DuckDB client (1.2 or later), no citylake needed",
    ]
    return "\n".join(lines) + "\n"


def _command() -> str:
    """How this shell reaches citylake: the path it was started by (e.g. .venv/bin/citylake), else the name."""
    exe = sys.argv[0]
    return os.path.relpath(exe) if os.path.basename(exe) == "citylake" and os.path.exists(exe) else "citylake"


def _duckdb_cli() -> str:
    """The DuckDB CLI `make install` put beside this Python (the duckdb-cli package), else the name on PATH."""
    exe = Path(sys.executable).with_name("duckdb")
    if not exe.exists():
        return "duckdb"
    rel = os.path.relpath(exe)
    return rel if not rel.startswith("..") else str(exe)
