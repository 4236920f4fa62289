"""Which executor runs a run's steps, and the Celery queues steps go to when workers run them.

By default every step runs in the run's own process (Dagster's in-process executor): nothing to
deploy. `CITYLAKE_EXECUTOR=celery` spreads the steps over Celery workers instead (the `celery` extra:
`pip install 'citylake[celery]'`), with the broker at `CITYLAKE_CELERY_BROKER` and the Celery
settings of `orchestration/instance/celery.yaml` (another file with `CITYLAKE_CELERY_CONFIG`). The
run process (`citylake run`, or the run worker Dagster launches for a UI run) submits each step as a
Celery task; the workers (`citylake worker`, i.e. `dagster-celery worker start` with that file)
execute it against the same Dagster instance. See docs/deploy.md, "Workers (Celery)".

Queues (the op tag `dagster-celery/queue`):
- `agency.<agency>`: the bronze loads of that agency, so the worker slots consuming it cap how many
  loads hit that agency's system at once;
- `warehouse`: every step that opens the DuckDB warehouse file (the dbt builds, the gates on dbt
  models, publication and its PostgreSQL copy). DuckDB takes one writer process and no reader while it
  writes, and the file is local to one machine: one worker process (`-c 1`) consumes this queue;
- `dagster` (dagster-celery's default): everything else (the bronze gates).

A step whose worker dies (SIGKILL, the OOM killer, a lost machine) is delivered again by the broker
and rerun on a live worker: celery.yaml sets `task_acks_late` (a task is acknowledged when it ends,
not when it starts) and `task_reject_on_worker_lost`. Every write is idempotent (orchestration/lake.py),
so the rerun neither loses nor duplicates rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: the executor: `in_process` (default) or `celery`
EXECUTOR_ENV = "CITYLAKE_EXECUTOR"
#: the broker URL of the Celery deployment, e.g. amqp://citylake:${PASSWORD}@broker.internal:5672/citylake
BROKER_ENV = "CITYLAKE_CELERY_BROKER"
#: another Celery settings file than orchestration/instance/celery.yaml
CONFIG_ENV = "CITYLAKE_CELERY_CONFIG"
CELERY_YAML = Path(__file__).resolve().parent / "instance" / "celery.yaml"
EXECUTORS = ("in_process", "celery")

#: dagster-celery's op tag naming the queue a step is sent to (dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG;
#: spelled here so that the default deployment never imports dagster-celery)
QUEUE_TAG = "dagster-celery/queue"
#: dagster-celery's default queue (dagster_celery.defaults.task_default_queue)
DEFAULT_QUEUE = "dagster"
WAREHOUSE_QUEUE = "warehouse"


def agency_queue(agency: str) -> str:
    """The queue of an agency's bronze loads (agency names are lower_snake_case, so never `warehouse`
    or `dagster` once prefixed)."""
    return f"agency.{agency}"


def queue_tags(queue: str) -> dict[str, str]:
    """Op tags sending a step to `queue` when workers run the steps (ignored by the in-process executor)."""
    return {QUEUE_TAG: queue}


def executor_name() -> str:
    name = (os.environ.get(EXECUTOR_ENV) or "in_process").strip().lower().replace("-", "_")
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={os.environ[EXECUTOR_ENV]!r}: expected one of {', '.join(EXECUTORS)}")
    return name


def uses_workers() -> bool:
    """Whether runs' steps go to Celery workers (CITYLAKE_EXECUTOR=celery)."""
    return executor_name() == "celery"


def celery_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or CELERY_YAML)


def celery_config() -> dict[str, Any]:
    """The celery executor's config: the `execution: config:` block of celery.yaml (the same block
    `dagster-celery worker start -y` reads, so the run process and the workers agree)."""
    import yaml

    path = celery_config_path()
    if not path.is_file():
        raise ValueError(f"{CONFIG_ENV}: {path} is not a file (the Celery settings of the workers)")
    config = ((yaml.safe_load(path.read_text()) or {}).get("execution") or {}).get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: no `execution: config:` block (the celery executor's settings)")
    if not os.environ.get(BROKER_ENV) and config.get("broker") == {"env": BROKER_ENV}:
        raise ValueError(
            f"{EXECUTOR_ENV}=celery needs {BROKER_ENV}, the broker's URL, e.g. amqp://guest@127.0.0.1:5672// "
            "(docs/deploy.md, Workers (Celery))"
        )
    return config


def executor_def():
    """The executor of every job: in-process, or Celery workers when CITYLAKE_EXECUTOR=celery."""
    import dagster as dg

    if not uses_workers():
        return dg.in_process_executor
    try:
        from dagster_celery import celery_executor
    except ImportError as exc:
        raise ImportError(
            f"{EXECUTOR_ENV}=celery needs dagster-celery: pip install 'citylake[celery]' ({exc})"
        ) from None
    return celery_executor.configured(celery_config(), name="celery")
