"""Jobs, schedules and sensors for running citylake day to day.

- `everything`: all assets (what `citylake run` and the UI's "Materialize all" run), with the
  run-failure alert hook. Its daily-partitioned assets rebuild the run's days.
- one job per source, `refresh__<agency>__<source>`: load the source into its bronze table, on the
  source's `schedule:` (cron, in the city's time zone). Schedules start stopped; turn them on in the
  UI (Automation) or with `dagster schedule start`.
- `conform`: the daily-partitioned assets and everything downstream of them (marts, indicators,
  publication), for a day or a range of days.
- the `conform_new_loads` sensor: after any bronze load (scheduled, a file arrival, the UI), one
  `conform` run over exactly the days the load's rows fall on, late data included.
"""

import dagster as dg

from orchestration.alerts import post_alert, webhook_url
from orchestration.city import city
from orchestration.defs.transform.assets import dbt_daily
from orchestration.partitions import data_days, range_tags


@dg.failure_hook(name="alert_webhook")
def alert_webhook(context: dg.HookContext) -> None:
    """POST a failed step to the city's alert webhook (alerts.webhook in city.yaml), if one is set."""
    url = webhook_url(city())
    if not url:
        return
    error = context.op_exception
    payload = {
        "city": city().name,
        "run_id": context.run_id,
        "job": context.job_name,
        "step": context.step_key,
        "error": f"{type(error).__name__}: {error}" if error else "unknown error",
    }
    try:
        post_alert(url, payload)
    except (OSError, ValueError) as exc:
        context.log.warning(f"alert webhook failed: {type(exc).__name__}: {exc}")


def source_job_name(agency: str, source: str) -> str:
    return f"refresh__{agency}__{source}"


everything = dg.define_asset_job(
    "everything",
    selection=dg.AssetSelection.all(include_sources=False),
    hooks={alert_webhook},
    description="Every asset of the city, bronze to publication.",
)

_source_jobs = {
    s.key: dg.define_asset_job(
        source_job_name(s.agency, s.name),
        selection=dg.AssetSelection.assets(dg.AssetKey(["bronze", s.agency, s.name])),
        hooks={alert_webhook},
        description=f"Load {s.where} into bronze; the conform_new_loads sensor rebuilds the days it touched.",
    )
    for s in city().sources
}

# the dbt models tagged `daily` and all that follows them; publication is one step, so it goes whole
conform = dg.define_asset_job(
    "conform",
    selection=dg.AssetSelection.assets(dbt_daily).downstream().required_multi_asset_neighbors(),
    hooks={alert_webhook},
    description="Rebuild the chosen days of the daily-partitioned models and everything downstream of them.",
)

schedules = [
    dg.ScheduleDefinition(
        name=f"{source_job_name(s.agency, s.name)}__schedule",
        job=_source_jobs[s.key],
        cron_schedule=s.schedule,
        execution_timezone=city().timezone,
        description=f"schedule of {s.where} in city.yaml",
    )
    for s in city().sources
    if s.schedule
]


@dg.sensor(
    name="conform_new_loads",
    job=conform,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a bronze load, rebuilds the days its rows fall on (and everything downstream) in one run.",
)
def conform_new_loads(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    cursor = int(context.cursor) if context.cursor else None
    loads = []
    for source in city().sources:
        # every load since the cursor, oldest first, page by page: none may be skipped
        records_filter = dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(["bronze", source.agency, source.name]), after_storage_id=cursor
        )
        page = None
        while page is None or page.has_more:
            page = context.instance.fetch_materializations(
                records_filter, limit=500, cursor=page.cursor if page else None, ascending=True
            )
            loads += [(r.storage_id, source, r.run_id) for r in page.records]
    if cursor is None:  # first tick: what was loaded before the sensor existed was conformed by its own runs
        newest = max((storage_id for storage_id, _, _ in loads), default=0)
        return dg.SensorResult(cursor=str(newest))
    if not loads:
        return dg.SkipReason("no new bronze loads")
    spans = [data_days(city(), [source], batch=run_id) for _, source, run_id in loads]
    spans = [s for s in spans if s]
    newest = str(max(storage_id for storage_id, _, _ in loads))
    if not spans:
        return dg.SensorResult(skip_reason="the new loads brought no rows", cursor=newest)
    first, last = min(s[0] for s in spans), max(s[1] for s in spans)
    # a city without partitions rebuilds every day: one conform run, no range
    tags = range_tags(first, last) if city().partitions_start is not None else {}
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"conform-{newest}", tags=tags)], cursor=newest)


defs = dg.Definitions(
    jobs=[everything, conform, *_source_jobs.values()], schedules=schedules, sensors=[conform_new_loads]
)
