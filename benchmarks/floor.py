"""Path (b), the floor: benchmarks/floor.sql over the raw agency files in one in-memory DuckDB.

DuckDB extensions cannot be installed offline, so the two SQLite databases are read with Python's
sqlite3 into Arrow and the XLSX sheets with openpyxl; everything else is read by floor.sql itself.

    python -m benchmarks.floor CITY_DIR OUT.parquet [--threads N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import sqlite3
import time
from pathlib import Path

import duckdb
import pyarrow as pa

SQL = Path(__file__).with_name("floor.sql")


def sqlite_table(path: Path, table: str) -> pa.Table:
    """A whole SQLite table as Arrow, column types as SQLite hands them over."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cur = con.execute(f'select * from "{table}"')
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        con.close()
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    return pa.table({n: pa.array(list(c)) for n, c in zip(names, columns, strict=True)})


def _cell(v: object) -> object:
    """An XLSX cell as the pipeline's reader sees it: a midnight datetime is a date; text stays text."""
    if isinstance(v, dt.datetime) and v.time() == dt.time(0):
        v = v.date()
    return v if v is None or isinstance(v, (int, float)) else str(v)


def xlsx_rows(pattern: str) -> pa.Table:
    """The first sheet of every workbook matching `pattern`, stacked by column name."""
    from openpyxl import load_workbook

    records: list[dict] = []
    for path in sorted(glob.glob(pattern)):
        wb = load_workbook(path, read_only=True, data_only=True)
        try:
            rows = wb.worksheets[0].iter_rows(values_only=True)
            header = [str(h) for h in next(rows, ())]
            records += [dict(zip(header, map(_cell, r), strict=False)) for r in rows if any(v is not None for v in r)]
        finally:
            wb.close()
    return pa.Table.from_pylist(records)


def run(city: Path, out: Path, threads: int | None = None) -> dict[str, float]:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    if threads:
        con.execute(f"set threads = {int(threads)}")
    src = {
        "src_daily_ridership": sqlite_table(city / "transport.sqlite", "daily_ridership"),
        "src_stops": sqlite_table(city / "transport.sqlite", "stops"),
        "src_collisions": sqlite_table(city / "safety.sqlite", "collisions"),
    }
    timings["sqlite_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    src["src_waste"] = xlsx_rows(str(city / "landing" / "waste" / "*.xlsx"))
    timings["xlsx_s"] = time.perf_counter() - t1
    for name, table in src.items():
        con.register(name, table)
    t2 = time.perf_counter()
    sql = SQL.read_text().replace("${CITY}", str(city.resolve()).replace("'", "''"))
    con.execute(sql)
    con.execute(f"copy (from indicators order by all) to '{str(out).replace(chr(39), chr(39) * 2)}' (format parquet)")
    timings["sql_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    return timings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("city", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    timings = run(args.city, args.out, args.threads)
    print(" ".join(f"{k}={v:.2f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
