"""The citylake code location: everything under orchestration/defs/, plus project-wide policy.

Each folder under defs/ registers its own definitions (bronze sources, dbt models, quality gates,
publication), so adding a domain never means editing a central list. Policy applied once here:
the executor: in-process by default (the steps are light; a process per step costs seconds each), or
Celery workers when CITYLAKE_EXECUTOR=celery (orchestration/workers.py, docs/deploy.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from orchestration.instance_storage import bounded_bookkeeping  # also: SQLite storage without fsync per event
from orchestration.workers import executor_def

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
bounded_bookkeeping()

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
    dg.Definitions(executor=executor_def()),
)


def everything_job() -> dg.JobDefinition:
    """The `everything` job, for runs executed out of process (`citylake run` with Celery workers): the
    workers rebuild it from this module, so it must be reachable by name (dagster.reconstructable)."""
    return defs.resolve_job_def("everything")
