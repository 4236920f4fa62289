"""The analyst side: latency of typical questions on the published catalog, opened read-only with duckdb.

Each query runs `warmup` times unmeasured, then `runs` times measured (execute + fetch every row) on one
read-only connection, as an analyst's session (a notebook, a BI tool) would hold it.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import duckdb

QUERIES: dict[str, str] = {
    # trend of PM2.5 by district: monthly mean of the daily district means
    "pm25_trend_by_district": """
        select district_code, date_trunc('month', local_date) as month, avg(pm25) as pm25
        from mart_air_quality
        group by all
        order by district_code, month
    """,
    # worst districts for 311 closure time: median days to close over the year, with the on-time share
    "worst_311_closure_districts": """
        select m.area_id, m.value as median_days_to_close, t.value as pct_closed_within_target
        from indicators as m
        join indicators as t
            on t.area_id = m.area_id and t.period_grain = m.period_grain and t.period_start = m.period_start
            and t.indicator_id = 'svc_311_closed_within_target'
        where m.indicator_id = 'svc_311_median_days_to_close' and m.period_grain = 'year' and m.area_id <> 'CITY'
        order by median_days_to_close desc
        limit 5
    """,
    # recycling share by month, citywide
    "recycling_share_by_month": """
        select month_start, 100 * sum(tonnes) filter (where stream = 'recycling') / sum(tonnes) as recycled_pct
        from mart_waste
        group by all
        order by month_start
    """,
}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def bench(catalog: Path, runs: int = 60, warmup: int = 3) -> dict[str, dict[str, float]]:
    """{query: {p50_ms, p95_ms, max_ms, rows}} plus the time to open the catalog (`open`)."""
    t0 = time.perf_counter()
    con = duckdb.connect(str(catalog), read_only=True)
    results: dict[str, dict[str, float]] = {"open": {"ms": (time.perf_counter() - t0) * 1000}}
    try:
        for name, sql in QUERIES.items():
            for _ in range(warmup):
                con.execute(sql).fetchall()
            times, n = [], 0
            for _ in range(runs):
                t = time.perf_counter()
                n = len(con.execute(sql).fetchall())
                times.append((time.perf_counter() - t) * 1000)
            results[name] = {
                "p50_ms": statistics.median(times),
                "p95_ms": percentile(times, 95),
                "max_ms": max(times),
                "rows": n,
            }
    finally:
        con.close()
    return results
