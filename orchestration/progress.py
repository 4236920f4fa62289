"""A Dagster logger for terminals: one line per finished step or asset, instead of Dagster's full log,
and the progress lines steps send from inside long work (`progress(context.log)`: rows read and
rows/s of a bronze load, dbt's model n of N)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import dagster as dg

#: a step's log record with this attribute (log.info(msg, extra={PROGRESS: True})) is shown on the terminal
PROGRESS = "citylake_progress"
#: ... and with this one (an asset key) stands for that asset's materialization line
PROGRESS_ASSET = "citylake_asset"
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
        meta = getattr(record, "dagster_meta", {})
        event = meta.get("dagster_event")
        elapsed = f"[{time.perf_counter() - self.start:6.1f}s]"
        if event is None and getattr(record, PROGRESS, False):
            asset = getattr(record, PROGRESS_ASSET, None)
            if asset:
                self.seen.add((asset, meta.get("run_id", "")))
            return f"{elapsed} {meta.get('orig_message', record.getMessage())}"
        if event is None or event.event_type_value not in _SHOWN:
            return None
        kind = event.event_type_value
        if kind == "ASSET_MATERIALIZATION":
            key = (event.asset_key.to_user_string(), record.dagster_meta.get("run_id", ""))
            if key in self.seen:
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


def progress(log: logging.Logger) -> Callable[[str], None]:
    """A function that sends a progress line through a step's `context.log` to the terminal (and the UI's log)."""
    return lambda message: log.info(message, extra={PROGRESS: True})


def counted_models(context, events: Iterable) -> Iterator:
    """dbt's events passed on, with a progress line "materialized <asset> (dbt model n of N)" as each is built."""
    import dagster as dg

    total = len(context.selected_asset_keys)
    done = 0
    for event in events:
        if isinstance(event, dg.Output):
            done += 1
            key = context.asset_key_for_output(event.output_name).to_user_string()
            line = f"materialized {key} (dbt model {done} of {total})"
            context.log.info(line, extra={PROGRESS: True, PROGRESS_ASSET: key})
        yield event
