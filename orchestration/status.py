"""What the terminal tells about a city: `citylake status`, `citylake quarantine`, and the summary a run ends with.

Everything is read cheaply from what is already recorded: the Delta logs (row counts and commit times
from the table metadata, never the rows), the Dagster instance (last materialization of each load,
latest outcome of each gate) and the published catalog (the quarantine and its summary, the
indicators).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from orchestration import lake
from orchestration.config import DEFAULT_MAX_DELAY_HOURS, CityConfig, Source


def delta_facts(uri: str) -> tuple[int, dt.datetime] | None:
    """(rows, time of the last commit) of the Delta table at uri from its log alone; None before its first commit."""
    table = lake.open_table(uri)
    if table is None:
        return None
    actions = pa.table(table.get_add_actions(flatten=True))
    rows = pc.sum(actions.column("num_records")).as_py() if actions.num_rows else 0
    last = table.history(1)
    when = dt.datetime.fromtimestamp(last[0]["timestamp"] / 1000, dt.UTC) if last else None
    return int(rows or 0), when


@dataclass
class Gate:
    """The latest outcome of one asset check."""

    asset: str
    name: str
    passed: bool | None  # None: never evaluated
    when: dt.datetime | None = None
    description: str = ""


@dataclass
class SourceState:
    source: Source
    rows: int | None = None  # None: nothing loaded yet
    committed_at: dt.datetime | None = None
    loaded_at: dt.datetime | None = None  # the last load (even one that found nothing new)
    quarantined: int = 0
    gates: list[Gate] = field(default_factory=list)

    def freshness(self, now: dt.datetime, timezone: str) -> tuple[bool, str]:
        """(fresh, how it reads). With `freshness.max_delay_hours`: the last load is at most that old. Else,
        with a `schedule:` (cron in the city's time zone): no scheduled load was missed, i.e. the last load
        is later than the tick before the latest one. Else: at most 26 h old (a daily load with slack)."""
        last = self.loaded_at or self.committed_at
        if last is None:
            return False, "never loaded"
        ago = f"{_age((now - last).total_seconds() / 3600)} ago"
        limit = (self.source.get("freshness") or {}).get("max_delay_hours")
        if limit is None and self.source.schedule:
            from dagster._utils.schedules import reverse_cron_string_iterator

            ticks = reverse_cron_string_iterator(now.timestamp(), self.source.schedule, timezone)
            next(ticks)  # the latest tick: its load may still be on its way
            due = next(ticks)
            if last >= due:
                return True, f"{ago} (on schedule)"
            return False, f"{ago} (LATE: the scheduled load of {due:%Y-%m-%d %H:%M %Z} is missing)"
        limit = float(DEFAULT_MAX_DELAY_HOURS if limit is None else limit)
        ok = (now - last).total_seconds() / 3600 <= limit
        return ok, f"{ago} ({'within' if ok else 'OVER'} {limit:g} h)"


def _age(hours: float) -> str:
    if hours < 1:
        return f"{max(hours * 60, 0):.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def _instance(cfg: CityConfig):
    """The city's Dagster instance, or None when it never ran (nothing is created to find out)."""
    import os

    home = Path(os.environ.get("DAGSTER_HOME") or cfg.state_dir / "dagster")
    if not (home / "dagster.yaml").exists() or not any(p.name != "dagster.yaml" for p in home.iterdir()):
        return None
    import dagster as dg

    return dg.DagsterInstance.from_config(str(home))


def source_states(cfg: CityConfig, gates: list[Gate] | None = None) -> list[SourceState]:
    """Every source of the city as the lake and the Dagster instance know it (`gates`: latest_gates())."""
    states = []
    for s in cfg.sources:
        state = SourceState(s)
        facts = delta_facts(lake.bronze_uri(cfg, s.agency, s.name))
        if facts is not None:
            state.rows, state.committed_at = facts
        quarantine = delta_facts(lake.quarantine_uri(cfg, s.agency, s.name))
        state.quarantined = quarantine[0] if quarantine else 0
        state.gates = [g for g in gates or [] if g.asset == f"bronze/{s.key}"]
        states.append(state)
    instance = _instance(cfg)
    if instance is None:
        return states
    import dagster as dg

    with instance:
        for state in states:
            event = instance.get_latest_materialization_event(
                dg.AssetKey(["bronze", state.source.agency, state.source.name])
            )
            if event is not None:
                state.loaded_at = dt.datetime.fromtimestamp(event.timestamp, dt.UTC)
    return states


def latest_gates(cfg: CityConfig) -> list[Gate]:
    """The latest outcome of every asset check the city's Dagster instance has evaluated (none for a city
    never run), from the instance's index of check executions: one query, no project definitions loaded."""
    instance = _instance(cfg)
    if instance is None:
        return []
    import dagster as dg
    import sqlalchemy as db
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable as checks
    from dagster._serdes import deserialize_value

    done = checks.c.execution_status != "PLANNED"
    latest = db.select(db.func.max(checks.c.id)).where(done).group_by(checks.c.asset_key, checks.c.check_name)
    query = db.select(
        checks.c.asset_key,
        checks.c.check_name,
        checks.c.execution_status,
        checks.c.evaluation_event_timestamp,
        checks.c.evaluation_event,
    ).where(checks.c.id.in_(latest))
    with instance, instance.event_log_storage.index_connection() as conn:
        rows = conn.execute(query).fetchall()
    gates = []
    for key, name, status, when, event in rows:
        passed = status == "SUCCEEDED"
        description = ""
        if not passed and event:
            entry = deserialize_value(event)
            evaluation = entry.dagster_event.event_specific_data if entry.dagster_event else None
            description = getattr(evaluation, "description", "") or ""
        asset = dg.AssetKey.from_db_string(key).to_user_string()
        gates.append(Gate(asset, name, passed, when, description))
    return sorted(gates, key=lambda g: (g.asset, g.name))


def _gate_text(gates: list[Gate]) -> str:
    if not gates:
        return "no gate"
    failed = [g.name for g in gates if g.passed is False]
    unrun = [g.name for g in gates if g.passed is None]
    if failed:
        return "FAILED " + ", ".join(failed)
    if len(unrun) == len(gates):
        return "not run yet"
    return "passed" + (f" ({', '.join(unrun)} not run)" if unrun else "")


def format_status(cfg: CityConfig, now: dt.datetime | None = None) -> tuple[str, bool]:
    """The `citylake status` text and whether all is well (every source loaded, fresh, its gates passed)."""
    now = now or dt.datetime.now(dt.UTC)
    gates = latest_gates(cfg)
    states = source_states(cfg, gates)
    lines = [f"{cfg.name} ({cfg.path})", f"lake {cfg.lake_root}", ""]
    if all(s.rows is None and s.loaded_at is None for s in states):
        lines.append(
            f"Nothing loaded yet: no bronze table under {cfg.lake_path('bronze')} and no run recorded. "
            "`citylake run` loads every source (`citylake check` first tests that each one can be reached)."
        )
        return "\n".join(lines) + "\n", False
    width = max(len(s.source.key) for s in states)
    lines.append(f"{'source':<{width}}  {'last load (UTC)':<16}  {'rows':>11}  {'quarantined':>11}  freshness / gate")
    well = True
    for s in states:
        fresh, text = s.freshness(now, cfg.timezone)
        last = s.loaded_at or s.committed_at
        gate = _gate_text(s.gates)
        well = well and fresh and "FAILED" not in gate
        rows = "-" if s.rows is None else f"{s.rows:,}"
        lines.append(
            f"{s.source.key:<{width}}  {f'{last:%Y-%m-%d %H:%M}' if last else 'never':<16}  {rows:>11}  "
            f"{s.quarantined:>11,}  {text}; gate {gate}"
            + (f"; schedule {s.source.schedule}" if s.source.schedule else "")
        )
    downstream = [g for g in gates if not g.asset.startswith("bronze/")]
    failed = [g for g in downstream if g.passed is False]
    unrun = sum(g.passed is None for g in downstream)
    lines.append("")
    lines.append(
        f"Gates after bronze: {sum(g.passed is True for g in downstream)} of {len(downstream)} passed"
        + (f", {len(failed)} FAILED" if failed else "")
        + (f", {unrun} not run yet" if unrun else "")
    )
    for g in failed:
        lines.append(f"  FAILED {g.asset}:{g.name} {g.description.splitlines()[0] if g.description else ''}".rstrip())
    well = well and not failed
    lines.append(_published_line(cfg))
    return "\n".join(lines) + "\n", well


def _published_line(cfg: CityConfig) -> str:
    path = cfg.catalog_path
    if not path.exists():
        return f"Catalog: not published yet ({path})"
    con = duckdb.connect(str(path), read_only=True)
    try:
        info = dict(con.execute("select key, value from _published").fetchall())
    finally:
        con.close()
    published = str(info.get("published_at", "?")).strip('"')
    return f"Catalog published {published} (UTC): {path}"


class NothingPublished(LookupError):
    pass


def _catalog(cfg: CityConfig) -> duckdb.DuckDBPyConnection:
    if not cfg.catalog_path.exists():
        raise NothingPublished(
            f"no published catalog at {cfg.catalog_path}: the quarantine is published with it; run `citylake run`"
        )
    return duckdb.connect(str(cfg.catalog_path), read_only=True)


def _filters(source: str | None, reason: str | None) -> tuple[str, list[Any]]:
    where, params = ["true"], []
    if source:
        where.append("agency || '/' || source_name = ?")
        params.append(source)
    if reason:
        where.append("contains(lower(reason), lower(?))")
        params.append(reason)
    return " and ".join(where), params


def quarantine_counts(cfg: CityConfig, source: str | None = None, reason: str | None = None) -> list[tuple]:
    """(layer, agency/source, reason, records) from the published quarantine summary, largest first."""
    where, params = _filters(source, reason)
    con = _catalog(cfg)
    try:
        return con.execute(
            f"""select layer, agency || '/' || source_name, reason, sum(records)::bigint
                from quarantine_summary where {where}
                group by all order by 2, 4 desc, 3""",
            params,
        ).fetchall()
    finally:
        con.close()


def quarantine_rows(cfg: CityConfig, limit: int, source: str | None = None, reason: str | None = None) -> list[tuple]:
    """Up to `limit` held-back records matching the filters, most recent first (the reason as recorded)."""
    where, params = _filters(source, reason)
    con = _catalog(cfg)
    try:
        return con.execute(
            f"""select layer, agency || '/' || source_name, record_key, reason, record, ingested_at
                from quarantine where {where}
                order by ingested_at desc, record_key limit {int(limit)}""",
            params,
        ).fetchall()
    finally:
        con.close()


#: the indicators of the catalog before a run, to tell what the run changed (deleted after the summary)
_INDICATOR_KEY = ("indicator_id", "area_id", "period_grain", "period_start")
#: a value counts as changed when it differs by more than this part of itself: a rebuild adds the same
#: floating-point values in another order (DuckDB's parallel sums), which moves the last digits only
#: (measured: at most 6e-15 of the value on the reference city at scale 10)
CHANGED_REL = 1e-9


def indicators_snapshot(cfg: CityConfig, folder: Path) -> Path | None:
    """The published indicators' keys and values before a run, as a Parquet file in `folder` (None: no catalog)."""
    if not cfg.catalog_path.is_file():
        return None
    import os

    out = folder / f".indicators-before-{os.getpid()}.parquet"
    con = duckdb.connect(str(cfg.catalog_path), read_only=True)
    try:
        cols = ", ".join([*_INDICATOR_KEY, "value"])
        con.execute(f"copy (select {cols} from indicators) to {_quoted(str(out))} (format parquet)")
    except duckdb.Error:
        return None  # a catalog without indicators (an old or foreign file): nothing to compare with
    finally:
        con.close()
    return out


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def indicator_changes(cfg: CityConfig, before: Path | None) -> list[tuple[str, int, int, int]]:
    """(indicator_id, new, changed, removed) rows between `before` and the catalog now, changed ones only."""
    con = duckdb.connect(str(cfg.catalog_path), read_only=True)
    try:
        old = f"read_parquet({_quoted(str(before))})" if before else "(select * from indicators limit 0)"
        on = " and ".join(f"n.{c} = o.{c}" for c in _INDICATOR_KEY)
        return con.execute(
            f"""select coalesce(n.indicator_id, o.indicator_id) as indicator_id,
                       count(*) filter (where o.indicator_id is null) as new,
                       count(*) filter (where n.indicator_id is not null and o.indicator_id is not null
                                        and ((n.value is null) <> (o.value is null)
                                             or abs(n.value - o.value)
                                                > {CHANGED_REL} * greatest(abs(n.value), abs(o.value)))) as changed,
                       count(*) filter (where n.indicator_id is null) as removed
                from indicators n full outer join {old} o on {on}
                group by 1 having new + changed + removed > 0 order by 1"""
        ).fetchall()
    finally:
        con.close()


def _meta(event) -> dict[str, Any]:
    materialization = event.event_specific_data.materialization
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


def run_summary(cfg: CityConfig, events: list, before: Path | None) -> str:
    """What a `citylake run` did, from its Dagster events: rows per source, gates, indicators, where to look."""
    try:
        return _run_summary(cfg, events, before)
    finally:
        if before is not None:
            before.unlink(missing_ok=True)


def _run_summary(cfg: CityConfig, events: list, before: Path | None) -> str:
    loads: dict[str, dict[str, Any]] = {}
    checks: dict[tuple[str, str], bool] = {}
    published: dict[str, Any] | None = None
    for e in events:
        if e.event_type_value == "ASSET_MATERIALIZATION":
            key = e.asset_key.path
            if key[0] == "bronze":
                loads["/".join(key[1:])] = _meta(e)
            elif key == ["published", "analyst_catalog"]:
                published = _meta(e)
        elif e.event_type_value == "ASSET_CHECK_EVALUATION":
            data = e.event_specific_data
            name = (data.asset_key.to_user_string(), data.check_name)
            # a daily asset's check runs once per day of the run: it passed only if it passed every day
            checks[name] = checks.get(name, True) and data.passed
    lines = ["", "Summary"]
    if loads:
        width = max(len(k) for k in loads)
        header = f"{'read':>10}  {'new/changed':>11}  {'quarantined':>11}  {'in bronze':>11}"
        lines.append(f"  {'source':<{width}}  {header}")
        for key in sorted(loads):
            m = loads[key]
            lines.append(
                f"  {key:<{width}}  {m.get('rows_read', 0):>10,}  {m.get('rows_written', 0):>11,}  "
                f"{m.get('rows_quarantined', 0):>11,}  {m.get('dagster/row_count', 0):>11,}"
            )
    else:
        lines.append("  No source loaded in this run.")
    failed = sorted(k for k, ok in checks.items() if not ok)
    if checks:
        lines.append(
            f"  Gates: {len(checks) - len(failed)} of {len(checks)} passed"
            + (f"; FAILED: {', '.join(f'{a}:{c}' for a, c in failed)}" if failed else "")
        )
    if published is None:
        lines.append(
            "  Not published in this run: the catalog and report are unchanged"
            + (f" ({cfg.catalog_path})" if cfg.catalog_path.exists() else "")
        )
        return "\n".join(lines) + "\n"
    changes = indicator_changes(cfg, before)
    if not changes:
        lines.append("  Indicators: no value changed")
    else:
        new, changed, removed = (sum(c[i] for c in changes) for i in (1, 2, 3))
        lines.append(
            f"  Indicators: {new:,} new, {changed:,} changed, {removed:,} removed rows in {len(changes)} indicators: "
            + ", ".join(c[0] for c in changes)
        )
    held = published.get("quarantined_rows", 0)
    lines.append(f"  Quarantined records in the catalog: {held:,} (by source and reason: `citylake quarantine`)")
    lines.append(f"  Report:  {published.get('report_path') or cfg.catalog_path.with_name('indicator_report.html')}")
    lines.append(f"  Catalog: {published.get('path') or cfg.catalog_path}")
    return "\n".join(lines) + "\n"
