"""Jobs, schedules and alerts for running citylake day to day.

- `everything`: all assets (what `citylake run` and the UI's "Materialize all" run), with the
  run-failure alert hook.
- one job per source, `refresh__<agency>__<source>`: the source's bronze table and everything
  downstream of it, on the source's `schedule:` (cron, in the city's time zone). Schedules start
  stopped; turn them on in the UI (Automation) or with `dagster schedule start`.
"""

import dagster as dg

from orchestration.alerts import post_alert, webhook_url
from orchestration.city import city


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
        # publication is one step (the catalog swaps whole), so it is selected whole
        selection=dg.AssetSelection.assets(dg.AssetKey(["bronze", s.agency, s.name])).downstream()
        | dg.AssetSelection.groups("published"),
        hooks={alert_webhook},
        description=f"Load {s.where} and rebuild everything downstream of it.",
    )
    for s in city().sources
}

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

defs = dg.Definitions(jobs=[everything, *_source_jobs.values()], schedules=schedules)
