"""A plain `citylake run` with nothing new stops after its loads (orchestration/up_to_date.py), and does
everything again as soon as anything the models are computed from changes.

The city is docs/cities.md's quick start (Brookfield: two districts, one CSV drop of crashes), run
through the real `citylake run` five times: first run; rerun with nothing new (skipped, the catalog
untouched); a new file in the drop (rebuilt, the new death counted); a changed city.yaml (rebuilt);
`--rebuild`; and a catalog gone (everything runs; the failed publication forgets the last complete run,
so the next plain run publishes again).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

from orchestration.dbt_build import KEPT_TARGETS
from tests.conftest import citylake
from tests.test_quickstart import quick_start

NOTHING_NEW = "Nothing new since the complete run"
REFERENCE = "materialized reference/city_districts"


def deaths(catalog: Path) -> dict[tuple[str, str], float]:
    with duckdb.connect(str(catalog), read_only=True) as con:
        rows = con.execute(
            "select area_id, cast(period_start as varchar), numerator from indicators "
            "where indicator_id = 'iso37120_18_8' and period_grain = 'month'"
        ).fetchall()
    return {(a, p): n for a, p, n in rows}


def daily_build_pruned(city: Path) -> bool:
    """Whether the run's daily dbt build (its newest target folder) read only the keys dated in its window
    (the staging models' semi-join on window_keys, compiled into the union model), not bronze whole."""
    target = max((city / ".citylake" / "dbt" / "target").glob("dbt_daily-*"), key=lambda p: p.stat().st_mtime)
    union = next((target / "compiled").rglob("int_road_collisions__unioned.sql")).read_text()
    return "semi join window_keys" in union


def brookfield(root: Path) -> Path:
    """The quick start's city written under root; returns its folder."""
    files, _, _ = quick_start()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "cities" / "brookfield"


def test_a_run_with_nothing_new_stops_after_its_loads(tmp_path: Path) -> None:
    city = brookfield(tmp_path)
    config = city / "city.yaml"
    catalog = city / "lake" / "catalog.duckdb"
    record = city / ".citylake" / "last_complete_run.json"

    first = citylake("run", config=config)
    assert NOTHING_NEW not in first.stdout
    bronze_version = json.loads(record.read_text())["fingerprint"]["tables"]["police/crashes"][0]
    assert bronze_version == 0
    before = deaths(catalog)
    assert before[("CITY", "2025-02-01")] == 2

    # 1. nothing new: the loads run (and commit nothing), the rest does not; the catalog is not rewritten
    stamp = catalog.stat().st_mtime_ns
    again = citylake("run", config=config)
    assert NOTHING_NEW in again.stdout, again.stdout
    assert catalog.stat().st_mtime_ns == stamp and deaths(catalog) == before

    # 2. a new file in the drop: its load commits, so everything runs and the death is counted
    (city / "drop" / "crashes_march.csv").write_text(
        "CrashNo,When,Killed,Hurt,Lat,Lon\n1005,10.03.2025 12:00,1,0,50.05,10.05\n"
    )
    newer = citylake("run", config=config)
    assert NOTHING_NEW not in newer.stdout
    # the reference data is computed from the definition alone, which did not change: left as built
    assert REFERENCE in first.stderr and REFERENCE not in newer.stderr, newer.stderr
    assert "materialized conformed/fct_road_collisions" in newer.stderr
    assert deaths(catalog)[("CITY", "2025-03-01")] == 1 and deaths(catalog)[("E", "2025-03-01")] == 1
    assert json.loads(record.read_text())["fingerprint"]["tables"]["police/crashes"][0] == bronze_version + 1
    assert NOTHING_NEW in citylake("run", config=config).stdout

    # 3. city.yaml changed (what defines the models), with the same data: everything runs
    config.write_text(config.read_text().replace("name: Brookfield", "name: Brookfield Town"))
    changed = citylake("run", config=config)
    assert NOTHING_NEW not in changed.stdout and REFERENCE in changed.stderr, changed.stderr
    assert NOTHING_NEW in citylake("run", config=config).stdout

    # 4. --rebuild, asked for
    stamp = catalog.stat().st_mtime_ns
    assert NOTHING_NEW not in citylake("run", "--rebuild", config=config).stdout
    assert catalog.stat().st_mtime_ns != stamp

    # 5. an output gone: everything runs again, up to the publication. Here the catalog's path is taken by a
    # folder, so the publication fails, and a failed run forgets the last complete run: the next plain run,
    # with nothing new loaded and the folder gone, does everything and publishes again
    assert record.exists()
    catalog.unlink()
    catalog.mkdir()
    failed = citylake("run", config=config, check=False)
    assert failed.returncode != 0 and NOTHING_NEW not in failed.stdout and not record.exists()
    assert "catalog" in failed.stdout + failed.stderr
    catalog.rmdir()
    again = citylake("run", config=config)
    assert NOTHING_NEW not in again.stdout and catalog.is_file() and record.exists()
    assert deaths(catalog)[("CITY", "2025-03-01")] == 1 and deaths(catalog)[("CITY", "2025-02-01")] == 2


def test_a_partitioned_city_rebuilds_only_the_days_its_new_loads_touched(tmp_path: Path) -> None:
    """With `partitions:`, a run whose loads bring new rows rebuilds the days those rows fall on (a day of
    margin each side), not every day since partitions.start nor every day up to today; the rest stays as
    built. And a `--rebuild` replaces the daily tables whole."""
    city = brookfield(tmp_path)
    config = city / "city.yaml"
    today = dt.datetime.now(ZoneInfo("Europe/Berlin")).date()
    start = today - dt.timedelta(days=20)
    config.write_text(config.read_text() + f"partitions:\n  start: {start}\n")
    first = citylake("run", config=config)
    # the quick start's crashes are of 2025: all in the first partition (the history)
    assert f"Daily partitions {start}: " in first.stdout, first.stdout
    # a build of everything (no complete run before) reads bronze whole: the window's keys are every key
    assert not daily_build_pruned(city)
    before = deaths(city / "lake" / "catalog.duckdb")

    day = today - dt.timedelta(days=5)
    (city / "drop" / "recent.csv").write_text(
        f"CrashNo,When,Killed,Hurt,Lat,Lon\n2001,{day:%d.%m.%Y} 12:00,1,0,50.05,10.05\n"
    )
    second = citylake("run", config=config)
    # the new row's day, a day of margin each side: not through today, since the last run was today too
    margin = dt.timedelta(days=1)
    assert f"Daily partitions {day - margin}..{day + margin}: " in second.stdout, second.stdout
    assert daily_build_pruned(city)
    assert REFERENCE in first.stderr and REFERENCE not in second.stderr
    # the window reaches dbt in its environment, so dbt keeps its parsed project (a changed --vars would
    # make it parse everything again); the run's dbt log is the newest
    log = max((city / ".citylake" / "logs").glob("run-*.log"), key=lambda p: p.stat().st_mtime).read_text()
    assert "Found " in log and "Unable to do partial parsing" not in log, log[:2000]
    after = deaths(city / "lake" / "catalog.duckdb")
    month = day.replace(day=1).isoformat()
    assert after[("E", month)] == before.get(("E", month), 0) + 1
    # the history (2025, in the first partition) was not rebuilt and is intact
    assert {k: v for k, v in after.items() if k[1] < "2026"} == {k: v for k, v in before.items() if k[1] < "2026"}
    assert NOTHING_NEW in citylake("run", config=config).stdout
    # dbt's artifact folders of old runs (here: made to look two days old) are pruned when a dbt step runs
    target = city / ".citylake" / "dbt" / "target"
    real = sorted(target.glob("dbt_daily-*"))
    old = [target / f"dbt_daily-{i:07d}-abcdef{i}" for i in range(7)]
    for i, folder in enumerate(old):
        (folder / "compiled").mkdir(parents=True)
        os.utime(folder, (time.time() - 2 * 86400 - i, time.time() - 2 * 86400 - i))
    # days from partitions.start through today hold every record: read whole too, and the same indicators
    again = citylake("run", "--from", str(start), config=config)
    kept = sorted(target.glob("dbt_daily-*"))
    assert len(kept) == KEPT_TARGETS and set(real) < set(kept), kept
    assert set(kept) - set(real) - set(old) and set(old) - set(kept) == set(old[KEPT_TARGETS - len(real) - 1 :])
    assert f"Daily partitions {start}..{today}: " in again.stdout, again.stdout
    assert not daily_build_pruned(city)
    assert deaths(city / "lake" / "catalog.duckdb") == after

    # `--rebuild` (like a first run or a changed definition) rebuilds every day the data covers and
    # replaces each daily table whole (dbt's full refresh): a row of a day the data no longer covers (here
    # planted in the fact, dated after the data, where a delete-and-insert of the data's days never looks)
    # does not stay behind in the fact or in the indicators
    stale = today - dt.timedelta(days=2)
    with duckdb.connect(str(city / ".citylake" / "warehouse.duckdb")) as con:
        con.execute(
            "insert into fct_road_collisions by name select * replace ('stale' as record_key, 5 as "
            "dead_within_30_days, ? as partition_date) from fct_road_collisions limit 1",
            [stale],
        )
    rebuilt = citylake("run", "--rebuild", config=config)
    assert f"Daily partitions {start}" in rebuilt.stdout and f"..{stale}" not in rebuilt.stdout, rebuilt.stdout
    with duckdb.connect(str(city / ".citylake" / "warehouse.duckdb"), read_only=True) as con:
        keys = [r[0] for r in con.execute("select record_key from fct_road_collisions").fetchall()]
    assert "stale" not in keys and sorted(keys) == ["1001", "1002", "1003", "1004", "2001"], keys
    assert deaths(city / "lake" / "catalog.duckdb") == after
