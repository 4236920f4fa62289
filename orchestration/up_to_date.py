"""Whether a plain `citylake run` has anything to do after its loads.

After the bronze loads (and, for a partitioned city, the reference data) of a run with no selection
and no days, citylake compares what everything downstream is computed from with what the last
complete run computed it from:

- every source's bronze and quarantine Delta version (a load that committed anything, rows or rejects,
  changes one);
- the files that define the computation: city.yaml, the districts' boundaries and population, the
  reference CSVs, the city's own bronze suites and staging models, and citylake's dbt project,
  shared suites and code (by path, size and modification time);
- the city's calendar day (records dated in the future become valid, freshness moves on);
- the published catalog and the warehouse still being there.

When all are equal, the models, indicators and publication are already what this run would make
of them: the run says so and stops after its loads, in seconds. `citylake run --rebuild` runs them
anyway. When only the loads differ, the reference data (seeds, districts, population, categories:
computed from the definition alone) is left as that run built it, and a partitioned city rebuilds
only the days the newly loaded rows fall on (and the days that became the past since), not every
day the data covers; a record deleted
at its source (gone from a snapshot or a re-delivered file) leaves its day as built until that day is
rebuilt (`--rebuild`, or `--from/--to`). The record (`<state_dir>/last_complete_run.json`) is
written only after a run in which every step and check succeeded, so a failed or killed run is
always followed by a full one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestration.config import CityConfig

REPO = Path(__file__).resolve().parent.parent
RECORD = "last_complete_run.json"
#: folders of the repository whose files define the computation (generated dbt output excluded)
_CODE = (REPO / "orchestration", REPO / "dbt_project", REPO / "expectations")
_SKIP_DIRS = {"target", "logs", "dbt_packages", "__pycache__", ".pytest_cache"}


def _files(roots: Iterable[Path]) -> Iterable[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and not _SKIP_DIRS.intersection(path.relative_to(root).parts):
                    yield path


def _files_digest(roots: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in _files(roots):
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def fingerprint(cfg: CityConfig) -> dict[str, Any]:
    """What the models, indicators and publication of `cfg` are computed from, now."""
    from orchestration.lake import bronze_uri, open_table, quarantine_uri
    from orchestration.partitions import today

    def version(uri: str) -> int | None:
        table = open_table(uri)
        return None if table is None else table.version()

    return {
        "today": today(cfg).isoformat(),
        "tables": {
            s.key: [version(bronze_uri(cfg, s.agency, s.name)), version(quarantine_uri(cfg, s.agency, s.name))]
            for s in cfg.sources
        },
        "definition": _definition(cfg),
    }


def _definition(cfg: CityConfig) -> str:
    """Digest of the files that define the computation (city.yaml, boundaries, population, reference
    data, the city's suites and staging models, citylake's code)."""
    return _files_digest(
        [
            cfg.path,
            cfg.boundaries,
            cfg.population,
            *cfg.reference_data.values(),
            cfg.base_dir / "expectations",
            cfg.base_dir / "staging",
            *_CODE,
        ]
    )


def reference_built(cfg: CityConfig) -> bool:
    """Whether the reference data in the warehouse (seeds, districts, population, categories: the models
    computed from the definition alone, never from a load) is as the last complete run built it: that
    run used the same definition and the warehouse is still there. A plain run then leaves them as they
    are instead of rebuilding them (one dbt build fewer on a new day)."""
    record = last_complete(cfg)
    return bool(record and record["fingerprint"].get("definition") == _definition(cfg) and _outputs_present(cfg))


def _outputs_present(cfg: CityConfig) -> bool:
    # the catalog is a local file wherever the lake is (city.yaml's catalog: names it for an s3:// lake)
    return (cfg.state_dir / "warehouse.duckdb").is_file() and cfg.catalog_path.is_file()


def last_complete(cfg: CityConfig) -> dict[str, Any] | None:
    path = cfg.state_dir / RECORD
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def unchanged_since_last_complete_run(cfg: CityConfig, now: dict[str, Any]) -> dict[str, Any] | None:
    """The last complete run's record when `now` equals what it was computed from and its outputs are
    still there; None when the downstream assets have something to do."""
    record = last_complete(cfg)
    if record and record.get("fingerprint") == now and _outputs_present(cfg):
        return record
    return None


def record_complete_run(cfg: CityConfig, now: dict[str, Any], run_id: str, loads_finished: dt.datetime) -> None:
    """Called after a run in which every step and check succeeded (`loads_finished`: when its loads
    had all committed); written atomically."""
    path = cfg.state_dir / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "run_id": run_id,
                "loads_finished": loads_finished.isoformat(),
                "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "fingerprint": now,
            },
            indent=1,
        )
    )
    tmp.replace(path)


def touched_days(cfg: CityConfig, record: dict[str, Any] | None, now: dict[str, Any]) -> tuple[dt.date, dt.date] | None:
    """For a partitioned city whose last complete run used the same definition: the days to rebuild,
    those the rows ingested since that run's loads finished fall on (this run's loads, and any a
    schedule ran in between), those of the rows that left bronze since then, and, when the city's
    calendar day has changed since that run, the days from then through today (a record dated in the
    future is built once its day comes), as one range. None
    when everything must be rebuilt (no record, a changed definition, an output gone)."""
    from orchestration.partitions import data_days, full_range, removed_days

    if (
        not record
        or "loads_finished" not in record
        or record["fingerprint"].get("definition") != now["definition"]
        or not _outputs_present(cfg)
    ):
        return None
    every_first, every_last = full_range(cfg)
    then = max(every_first, min(every_last, dt.date.fromisoformat(record["fingerprint"]["today"])))
    loaded = data_days(cfg, since=dt.datetime.fromisoformat(record["loads_finished"]))
    # and the days of what left bronze since then (a refused file, a snapshot's deleted keys)
    removed = removed_days(cfg, record["fingerprint"].get("tables", {}))
    # the days since that run only when days have passed: one run takes one range of days, and late data
    # joined to today would rebuild (and record in Dagster) every empty day in between
    spans = [s for s in (loaded, removed, (then, every_last) if then < every_last else None) if s]
    if not spans:
        return every_last, every_last
    return min(s[0] for s in spans), max(s[1] for s in spans)


def forget(cfg: CityConfig) -> None:
    """A run that did not complete: the next plain run does everything."""
    (cfg.state_dir / RECORD).unlink(missing_ok=True)
