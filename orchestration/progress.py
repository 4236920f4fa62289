"""A Dagster logger for terminals: one line per finished step or asset, instead of Dagster's full log."""

from __future__ import annotations

import logging
import sys
import time

import dagster as dg

_SHOWN = {"ASSET_MATERIALIZATION", "STEP_FAILURE", "ASSET_CHECK_EVALUATION", "STEP_UP_FOR_RETRY"}


class ProgressHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.start = time.perf_counter()
        #: (asset, run) already reported: a run over many days materializes each daily asset once per day
        self.seen: set[tuple[str, str]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.describe(record)
        except Exception:  # noqa: BLE001 - a progress line must never fail the step it reports on
            self.handleError(record)
            return
        if line:
            print(line, file=sys.stderr, flush=True)

    def describe(self, record: logging.LogRecord) -> str | None:
        event = getattr(record, "dagster_meta", {}).get("dagster_event")
        if event is None or event.event_type_value not in _SHOWN:
            return None
        elapsed = f"[{time.perf_counter() - self.start:6.1f}s]"
        kind = event.event_type_value
        if kind == "ASSET_MATERIALIZATION":
            key = (event.asset_key.to_user_string(), record.dagster_meta.get("run_id", ""))
            if event.partition and key in self.seen:
                return None
            self.seen.add(key)
            line = f"{elapsed} materialized {key[0]}" + (" (each day of the run)" if event.partition else "")
        elif kind == "ASSET_CHECK_EVALUATION":
            ev = event.event_specific_data
            if ev.passed:
                return None
            line = f"{elapsed} CHECK FAILED {ev.asset_key.to_user_string()}:{ev.check_name} {ev.description or ''}"
        else:
            line = f"{elapsed} {kind.replace('_', ' ').lower()} {event.step_key}"
        return line


@dg.logger(description="One line per materialized asset, failed check or failed step")
def progress_logger(_init_context) -> logging.Logger:
    log = logging.Logger("citylake", level=logging.DEBUG)
    log.addHandler(ProgressHandler())
    return log
