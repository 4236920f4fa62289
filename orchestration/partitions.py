"""Daily partitions: the city-local days the time-based assets are split into.

The per-entity intermediate models and the conformed facts (dbt tag `daily`) are partitioned by the
day of each record (`partition_date`, see dbt_project/macros/citylake_partitions.sql). A run names a
day or a range of days; the dbt models get the range as vars and replace only those days. Bronze
loads, the dimensions, the indicators and publication are not partitioned: a load takes whatever the
source has that is new, and the indicators are recomputed from the conformed facts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from zoneinfo import ZoneInfo

import dagster as dg

from orchestration.config import EARLIEST, CityConfig, Source

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def daily_partitions(cfg: CityConfig) -> dg.DailyPartitionsDefinition | None:
    """partitions.start to today (the day in progress included), in the city's time zone; None for a
    city without a `partitions:` key, whose time-based models are rebuilt whole by every run."""
    if cfg.partitions_start is None:
        return None
    return dg.DailyPartitionsDefinition(
        start_date=cfg.partitions_start.isoformat(), timezone=cfg.timezone, end_offset=1
    )


def today(cfg: CityConfig) -> dt.date:
    """Today in the city: the last daily partition."""
    return dt.datetime.now(ZoneInfo(cfg.timezone)).date()


def range_tags(first: dt.date, last: dt.date) -> dict[str, str]:
    """Run tags for one run over the days first..last (both included)."""
    if last < first:
        raise ValueError(f"the range ends ({last}) before it starts ({first})")
    return {RANGE_START: first.isoformat(), RANGE_END: last.isoformat()}


def full_range(cfg: CityConfig) -> tuple[dt.date, dt.date]:
    """Every day there is: what `citylake run` rebuilds when no day is named (from 1900, the earliest
    day a record may have, for a city without partitions)."""
    return cfg.partitions_start or EARLIEST, today(cfg)


#: run tag of a `citylake run` whose window is every day the bronze data covered (a build of everything: no
#: usable last complete run): its staging models read bronze whole instead of first finding the keys dated
#: in the window, which would be every key (see citylake_is_window in dbt_project/macros/citylake_partitions.sql)
ALL_DATA_TAG = "citylake/window_is_all_data"


def window_vars(context: dg.AssetExecutionContext) -> dict[str, str]:
    """The run's partition window as the dbt vars min_date/max_date (city-local days, inclusive), and
    read_all: whether the window is all the data there is (ALL_DATA_TAG)."""
    start, end = context.partition_time_window
    return {
        "min_date": start.date().isoformat(),
        "max_date": (end - dt.timedelta(days=1)).date().isoformat(),
        "read_all": "true" if context.run.tags.get(ALL_DATA_TAG) == "true" else "false",
    }


def data_days(
    cfg: CityConfig,
    sources: Sequence[Source] | None = None,
    batch: str | None = None,
    since: dt.datetime | None = None,
) -> tuple[dt.date, dt.date] | None:
    """The days the bronze data of `sources` (default: all) covers, only the rows a load (`batch`,
    its run id) wrote if given, only the rows ingested at or after `since` if given; None when there
    are none. What `citylake run` rebuilds when no day is
    named, and what a new load makes the `conform_new_loads` sensor rebuild. Read from each source's
    mapped time column, a day of margin either side for time zones; a record whose time cannot be read
    is dated by its arrival, so today is included."""
    import duckdb

    first, last = None, None
    with duckdb.connect() as con:
        for source in cfg.sources if sources is None else sources:
            first, last = _widen(cfg, first, last, *_source_days(con, cfg, source, batch, since))
    return _with_margin(cfg, first, last)


def _source_days(
    con, cfg: CityConfig, source: Source, batch: str | None = None, since: dt.datetime | None = None
) -> tuple[dt.date | None, dt.date | None, int]:
    """(first day, last day, rows whose day cannot be read) of one source's bronze rows (of a load, since an
    instant, as data_days says), without margins; (None, None, 0) for none."""
    from orchestration.entities import ENTITIES
    from orchestration.lake import bronze_uri, open_table, rows_where

    mapping = source.columns.get(ENTITIES[source.feeds].time) if source.feeds else None
    table = open_table(bronze_uri(cfg, source.agency, source.name)) if mapping is not None else None
    if table is None:
        return None, None, 0
    # a load's rows through delta-rs (see lake.rows_where); a time filter is safe to push into pyarrow
    con.register("bronze", rows_where(table, "_batch", batch) if batch else table.to_pyarrow_dataset())
    try:
        return con.execute(
            f"""select min(d), max(d), count(*) filter (where d is null) from (
                select {_day(mapping)} as d
                from bronze where (?::timestamptz is null or _ingested_at >= ?))""",
            [since, since],
        ).fetchall()[0]
    finally:
        con.unregister("bronze")


def _day(mapping: str) -> str:
    """SQL: the day of a row's time column as mapped in city.yaml (its text read as an instant, a wall
    time or a date; null when unreadable)."""
    from orchestration.dbt_build import raw_expression

    raw = f"cast({raw_expression(mapping)} as varchar)"
    return (
        f"coalesce(cast(try_cast({raw} as timestamptz) as date), cast(try_cast({raw} as timestamp) as date), "
        f"try_cast({raw} as date))"
    )


def _widen(cfg: CityConfig, first, last, lo, hi, unread: int) -> tuple[dt.date | None, dt.date | None]:
    """first..last widened to lo..hi; a record whose time cannot be read is dated by arrival: today."""
    if unread:
        hi = today(cfg)
    for d in (lo, hi):
        if d is not None:
            first = d if first is None else min(first, d)
            last = d if last is None else max(last, d)
    return first, last


def _with_margin(cfg: CityConfig, first, last) -> tuple[dt.date, dt.date] | None:
    """first..last with a day of margin either side (time zones), within the city's days; None for none."""
    if first is None:
        return None
    every_first, every_last = full_range(cfg)
    day = dt.timedelta(days=1)
    return max(every_first, min(first - day, every_last)), min(every_last, max(last + day, every_first))


def removed_days(cfg: CityConfig, versions: Mapping[str, Sequence[int | None]]) -> tuple[dt.date, dt.date] | None:
    """The days of the records that left bronze, or gave way to a newer version, since the bronze versions
    `versions` (source key -> [bronze version, ...], as up_to_date.fingerprint records them): a refused
    file's records, a file's that now has no good rows, the keys a snapshot no longer has, a corrected
    file's old versions. New rows say which days they touch; removed ones do not, and their days must be
    rebuilt too, or the facts keep what bronze no longer holds. Read from the Parquet files the Delta log
    removed since then (Delta keeps them until a vacuum), less the rows a rewrite copied unchanged (the
    same key, arriving at the same instant, is in the table now). None when none."""
    import duckdb
    import pyarrow.dataset as pads
    from deltalake import DeltaTable

    from orchestration.entities import ENTITIES
    from orchestration.lake import bronze_uri, open_table, parquet_select, storage_options
    from orchestration.quality import quote

    first, last = None, None
    with duckdb.connect() as con:
        for source in cfg.sources:
            mapping = source.columns.get(ENTITIES[source.feeds].time) if source.feeds else None
            then = (versions.get(source.key) or [None])[0]
            uri = bronze_uri(cfg, source.agency, source.name)
            table = open_table(uri) if mapping is not None and then is not None else None
            if table is None or table.version() == then:
                continue
            try:
                old = DeltaTable(uri, version=then, storage_options=storage_options(uri))
                gone = {f.rsplit("/", 1)[-1] for f in set(old.file_uris()) - set(table.file_uris())}
                if not gone:
                    continue
                if "://" in uri:  # (object storage: read through delta-rs's datasets)
                    dataset = old.to_pyarrow_dataset()
                    fragments = [f for f in dataset.get_fragments() if f.path.rsplit("/", 1)[-1] in gone]
                    con.register(
                        "removed", pads.FileSystemDataset(fragments, dataset.schema, dataset.format, dataset.filesystem)
                    )
                    con.register("present", table.to_pyarrow_dataset())
                else:  # on local disk, by DuckDB's own Parquet reader (the anti-join over 4M air keys of a
                    # replaced file: 0.37 s through the Arrow dataset, 0.06 s so)
                    removed = [f for f in old.file_uris() if f.rsplit("/", 1)[-1] in gone]
                    con.execute(f"create or replace temp view removed as {parquet_select(con, old, removed)}")
                    con.execute(f"create or replace temp view present as {parquet_select(con, table)}")
                keys = [quote(k) for k in source.primary_key] + ["_ingested_at"]
                on = " and ".join(f"r.{k} is not distinct from p.{k}" for k in keys)
                lo, hi, unread = con.execute(
                    f"""select min(d), max(d), count(*) filter (where d is null) from (
                        select {_day(mapping)} as d, {", ".join(keys)} from removed) as r
                        anti join (select {", ".join(keys)} from present) as p on {on}"""
                ).fetchall()[0]
            except Exception:  # noqa: BLE001 - that version vacuumed or its log cleaned up: every day it covers
                lo, hi, unread = _source_days(con, cfg, source)
            finally:
                for name in ("removed", "present"):
                    con.unregister(name)
                    con.execute(f"drop view if exists {name}")
            first, last = _widen(cfg, first, last, lo, hi, unread)
    return _with_margin(cfg, first, last)
