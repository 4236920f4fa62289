"""Freshness of every bronze table, as Dagster sees it: has the table been updated recently enough?

Each source may set `freshness: {max_delay_hours: N}` in city.yaml (default 26 h: a daily load with
slack). These checks warn in the UI; the data-time freshness of a feed is judged by the blocking GX
gate (see defs/quality).
"""

import datetime as dt

import dagster as dg

from orchestration.city import city
from orchestration.config import DEFAULT_MAX_DELAY_HOURS

defs = dg.Definitions(
    asset_checks=[
        check
        for s in city().sources
        for check in dg.build_last_update_freshness_checks(
            assets=[dg.AssetKey(["bronze", s.agency, s.name])],
            lower_bound_delta=dt.timedelta(
                hours=float((s.get("freshness") or {}).get("max_delay_hours", DEFAULT_MAX_DELAY_HOURS))
            ),
        )
    ]
)
