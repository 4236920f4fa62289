"""A build of a window of days reads only the keys that can land in it (render_window_versions in
orchestration/dbt_build.py), and gives exactly the rows a build of every day gives.

Random cities (tests/random_city.py, seeds below) are made harder here: a `partitions:` key whose start
lies inside their history (the older records live in the first partition), a second copy of one
source with a `deduplicate:` rule matching on the entity's time (and, with a second entity, one not
matching on it: those sources are read whole), and deliveries that change recorded days: in the
first load a later file of the same run re-delivering keys (the tie of `_ingested_at` broken by the
file path), then a second load re-delivering keys with another day, an unreadable time (dated by
arrival: today), a time in the future (clamped to today) or unchanged (a plain duplicate).

The loads run through the real `citylake run --select` (bronze only); the city's rendered dbt project
is then built by dbt itself: every day (the reference, unpruned), then several windows (pruned) on top
of it. After each window build every daily model must hold exactly the reference's rows (EXCEPT ALL
both ways, so duplicates count). `CITYLAKE_RANDOM_SEEDS=1,2` runs other seeds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import subprocess
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pandas as pd
import pytest
import yaml

from orchestration import warm_dbt
from orchestration.entities import ENTITIES
from tests.conftest import citylake
from tests.random_city import make_city

_chosen = [int(s) for s in os.environ.get("CITYLAKE_RANDOM_SEEDS", "").split(",") if s.strip()]
SEEDS = _chosen or [6, 31]
DAY = re.compile(r"\d{4}-\d\d-\d\d")


@pytest.fixture(autouse=True)
def _warm_dbt():
    """The tests' dbt processes fork from a warm dbt server, as a run's do (orchestration/warm_dbt.py):
    about 2.5 s of importing dbt saved on each of their ~30 dbt commands."""
    with warm_dbt.warm_dbt_server(now=True):
        yield


def _shift(value: str, days: int) -> str:
    m = DAY.search(value)
    new = (dt.date.fromisoformat(m.group(0)) + dt.timedelta(days=days)).isoformat()
    return value[: m.start()] + new + value[m.end() :]


def _future(value: str) -> str:
    m = DAY.search(value)
    return value[: m.start()] + "2031" + value[m.start() + 4 :]


def _read(folder: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_csv(p, dtype=str, keep_default_na=False) for p in sorted(folder.glob("*.csv"))], ignore_index=True
    )


def _redeliver(rng: random.Random, folder: Path, time_column: str, name: str, second: bool) -> list[str]:
    """Write `name` into the drop folder: a sample of its records again, with changed times; returns
    the days they were moved away from."""
    rows = _read(folder).drop_duplicates()
    sample = rows.sample(n=max(1, len(rows) // 4), random_state=rng.randrange(10**6)).copy()
    old_days = []
    for n, i in enumerate(sample.index):
        value = sample.at[i, time_column]
        if not DAY.search(value):
            continue
        r = rng.random() if n > 1 or not second else 0.55 + n * 0.15  # the second load: both kinds, surely
        if r < 0.5:
            sample.at[i, time_column] = _shift(value, rng.choice([-40, -3, -1, 1, 2, 30]))
            old_days.append(DAY.search(value).group(0))
        elif second and r < 0.65:
            sample.at[i, time_column] = rng.choice(["unknown", "2025-13-45 10:00", "31.02.2025"])
        elif second and r < 0.75:
            sample.at[i, time_column] = _future(value)
        # else: the same record again
    sample.to_csv(folder / name, index=False)
    return old_days


def _day_column(mapping: str, rows: pd.DataFrame) -> str:
    """The file column holding the day of the entity's time: the mapped column, or in an expression
    over several (a day and a clock column joined) the one whose values carry a date."""
    if mapping in rows.columns:
        return mapping
    named = re.findall(r'"([^"]+)"', mapping)
    return next(c for c in named if c in rows.columns and rows[c].str.contains(DAY).any())


def _harden(seed: int, config: Path) -> tuple[dict, dict[str, str], list[str]]:
    """Partitions, a mirrored source with deduplicate rules, and a first re-delivery in the first load.
    Returns the city.yaml, {drop folder: time column} and the days records were moved away from."""
    rng = random.Random(seed * 7919 + 1)
    cfg = yaml.safe_load(config.read_text())
    root = config.parent
    folders: dict[str, str] = {}
    for agency, sources in cfg["agencies"].items():
        for name, spec in sources.items():
            folder = f"{agency}-{name}"
            folders[folder] = _day_column(spec["columns"][ENTITIES[spec["feeds"]].time], _read(root / "drop" / folder))
    days = sorted(
        m.group(0) for f, col in folders.items() for v in _read(root / "drop" / f)[col] if (m := DAY.search(v))
    )
    cfg["partitions"] = {"start": days[len(days) // 3]}

    cfg["deduplicate"] = {}
    for k, (agency, sources) in enumerate(list(cfg["agencies"].items())):
        name, spec = next(iter(sources.items()))
        entity = ENTITIES[spec["feeds"]]
        # the first entity's rule matches on its time (pruned), the second's does not (read whole)
        match = [entity.time] if k == 0 else [c for c in spec["columns"] if c != entity.time][:1]
        if k > 1 or not match:
            break
        # (the same source name under another agency: records are told apart by agency, source and key)
        mirror = f"{agency}_mirror"
        rows = _read(root / "drop" / f"{agency}-{name}")
        copy = rows.sample(frac=0.6, random_state=seed)
        (root / "drop" / f"{mirror}-{name}").mkdir()
        copy.to_csv(root / "drop" / f"{mirror}-{name}" / "part-0.csv", index=False)
        cfg["agencies"][mirror] = {name: {**spec, "path": f"./drop/{mirror}-{name}/*.csv"}}
        folders[f"{mirror}-{name}"] = folders[f"{agency}-{name}"]
        cfg["deduplicate"][entity.name] = {"match": match, "prefer": [f"{agency}/{name}"]}
    moved = []
    for folder, col in folders.items():
        moved += _redeliver(rng, root / "drop" / folder, col, "part-9.csv", second=False)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg, folders, moved


def _dbt_process(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DBT_NO_VERSION_CHECK": "true"}
    return subprocess.run(
        [warm_dbt.executable(), *args, "--project-dir", str(project), "--profiles-dir", str(project)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=900,
    )


def _dbt(project: Path, *args: str) -> None:
    res = _dbt_process(project, *args)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def _unique_tests(project: Path, days: tuple[dt.date, dt.date] | None) -> subprocess.CompletedProcess:
    """The facts' uniqueness tests, as dbt runs them in a build of `days` (None: every day)."""
    window = ["--vars", json.dumps({"min_date": str(days[0]), "max_date": str(days[1])})] if days else []
    return _dbt_process(project, "test", "--select", "test_name:dbt_utils_free_unique_combination,tag:daily", *window)


def _daily_models(project: Path) -> list[str]:
    manifest = json.loads((project / "target" / "manifest.json").read_text())
    return sorted(
        f'"{n["schema"]}"."{n["alias"]}"'
        for n in manifest["nodes"].values()
        if n["resource_type"] == "model" and "daily" in n["tags"]
    )


def _snapshot(warehouse: Path, models: list[str]) -> None:
    with duckdb.connect(str(warehouse)) as con:
        con.execute("create schema if not exists reference")
        for i, m in enumerate(models):
            con.execute(f"create or replace table reference.m{i} as select * from {m}")


def _differences(warehouse: Path, models: list[str]) -> dict[str, tuple[int, int, int]]:
    """model -> (rows, rows only in the build, rows only in the reference) where they differ."""
    out = {}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for i, m in enumerate(models):
            # (a sum of doubles may differ in its last bit with the order rows were added in: a daily
            # summary's sums are compared to 1e-6, every other column exactly)
            cols = ", ".join(
                f'round("{c}", 6)' if c.endswith("_sum") else f'"{c}"'
                for (c,) in con.execute(f"select column_name from (describe {m})").fetchall()
            )
            left, right = f"select {cols} from {m}", f"select {cols} from reference.m{i}"
            e = con.execute(f"select count(*) from ({left} except all {right})").fetchone()[0]
            g = con.execute(f"select count(*) from ({right} except all {left})").fetchone()[0]
            n = con.execute(f"select count(*) from {m}").fetchone()[0]
            if e or g:
                out[m] = (n, e, g)
    return out


def _unplace(warehouse: Path, points: str, unioned: list[str], lo: dt.date, hi: dt.date) -> int:
    """Delete from the coordinate lookup the pairs that rows dated lo..hi carry; how many went."""
    carried = " or ".join(
        f"exists (select 1 from {u} where district_method = 'coordinates' and partition_date between date '{lo}' "
        f"and date '{hi}' and district_lat = p.latitude and district_lon = p.longitude)"
        for u in unioned
    )
    with duckdb.connect(str(warehouse)) as con:
        return con.execute(f"delete from {points} as p where {carried}").fetchone()[0]


def _rows(warehouse: Path, model: str, where: str) -> int:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(f"select count(*) from {model} where {where}").fetchone()[0]


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed{s}" for s in SEEDS])
def test_a_window_build_reads_its_keys_only_and_equals_a_full_build(seed, tmp_path):
    from orchestration.config import load_config
    from orchestration.dbt_build import bronze_views, build_project

    config, _ = make_city(seed, tmp_path / f"city{seed}")
    cfg, folders, moved = _harden(seed, config)
    citylake("run", "--select", "key:bronze/*", config=config, timeout=600)
    rng = random.Random(seed)
    for folder, col in folders.items():
        moved += _redeliver(rng, config.parent / "drop" / folder, col, "part-99.csv", second=True)
    citylake("run", "--select", "key:bronze/*", config=config, timeout=600)

    city = load_config(config)
    project = build_project(city)
    warehouse = city.state_dir / "warehouse.duckdb"
    models = _daily_models(project)

    # the rendered staging models: pruned unless a deduplicate rule does not match on the time
    generated = project / "models" / "staging" / "_generated"
    for agency, sources in cfg["agencies"].items():
        for name, spec in sources.items():
            rule = cfg["deduplicate"].get(spec["feeds"])
            pruned = rule is None or ENTITIES[spec["feeds"]].time in rule["match"]
            assert ("window_keys" in (generated / f"stg_{agency}__{name}.sql").read_text()) == pruned

    bronze_views(city)  # what citylake does before each of its dbt builds
    _dbt(project, "seed")
    _dbt(project, "run", "--select", "+tag:daily")  # every day: the reference, unpruned
    _snapshot(warehouse, models)
    start = dt.date.fromisoformat(str(cfg["partitions"]["start"]))
    today = dt.datetime.now(ZoneInfo(city.timezone)).date()
    unioned = [m for m in models if m.endswith('__unioned"')]
    in_start = sum(_rows(warehouse, m, f"partition_date = date '{start}'") for m in unioned)
    in_today = sum(_rows(warehouse, m, f"partition_date = date '{today}'") for m in unioned)
    assert in_start and in_today, "the city should have history and records dated by arrival or clamped"
    mid = start + dt.timedelta(days=rng.randint(0, max(0, (dt.date(2026, 1, 1) - start).days)))
    old = dt.date.fromisoformat(rng.choice(moved)) if moved else mid
    windows = [(start, start), (today, today), (old - dt.timedelta(days=1), old + dt.timedelta(days=1)), (mid, mid)]
    points = next(m for m in models if '"int_district_coordinates"' in m)
    unplaced = []
    for first, last in windows:
        lo, hi = max(first, start), min(last, today)
        # the pairs of the window's rows taken out of the coordinate lookup, as if never placed: the build of
        # the window must place them again (it reads only the window's rows, and adds only pairs not placed)
        unplaced.append(_unplace(warehouse, points, unioned, lo, hi))
        _dbt(project, "run", "--select", "tag:daily", "--vars", json.dumps({"min_date": str(lo), "max_date": str(hi)}))
        bad = _differences(warehouse, models)
        assert not bad, f"seed {seed}, window {lo}..{hi} (city in {config.parent}): {bad}"
    assert sum(unplaced) or not _rows(warehouse, points, "true"), "no pair to place again: the check did nothing"
    compiled = project / "target" / "compiled"
    assert any("window_keys" in p.read_text() for p in compiled.rglob("*__unioned.sql"))

    # a build of some days checks the uniqueness of the keys it holds only, each against the whole table
    days = (start + dt.timedelta(days=1), today)
    facts = [m for m in models if '"fct_' in m]
    with duckdb.connect(str(warehouse), read_only=True) as con:
        fact = next(
            m
            for m in facts
            if con.execute(f"select count(*) from {m} where partition_date = date '{start}'").fetchone()[0]
            and con.execute(f"select count(*) from {m} where partition_date > date '{start}'").fetchone()[0]
        )
    assert _unique_tests(project, days).returncode == 0
    assert any("exists" in p.read_text() for p in compiled.rglob("dbt_utils_free_unique_combinat*.sql"))
    for day, in_days in ((f"> date '{start}'", True), (f"= date '{start}'", False)):
        with duckdb.connect(str(warehouse)) as con:  # a second copy of one row of the fact
            con.execute(f"insert into {fact} select * from {fact} where partition_date {day} limit 1")
        found = _unique_tests(project, days)
        # a copy inside the days fails their build; one outside is left to the build of its own day
        assert (found.returncode != 0) is in_days, found.stdout[-3000:]
        if in_days:
            assert f"dbt_utils_free_unique_combination_{fact.split('.')[-1].strip(chr(34))}" in found.stdout
        assert _unique_tests(project, None).returncode != 0  # every day: always found
        with duckdb.connect(str(warehouse)) as con:  # (the copy taken out again)
            con.execute(f"create or replace table scratch as select distinct * from {fact}")
            con.execute(f"delete from {fact}")
            con.execute(f"insert into {fact} select * from scratch")
            con.execute("drop table scratch")


def test_a_deduplicate_rule_not_matching_on_the_time_reads_its_sources_whole():
    from orchestration.config import Deduplicate
    from orchestration.dbt_build import window_prunable

    entity = ENTITIES["road_collisions"]
    assert window_prunable(entity, None)
    assert window_prunable(entity, Deduplicate("road_collisions", ("accident_at", "latitude", "longitude")))
    assert not window_prunable(entity, Deduplicate("road_collisions", ("latitude", "longitude")))


def _city_with_air(root: Path) -> tuple[Path, int]:
    """The config of the first random city (seeds from 100) that has an air source."""
    for seed in range(100, 200):
        config, _ = make_city(seed, root / f"city{seed}")
        feeds = [
            s["feeds"] for sources in yaml.safe_load(config.read_text())["agencies"].values() for s in sources.values()
        ]
        if "air_quality_observations" in feeds:
            return config, seed
    raise AssertionError("no random city from seed 100 to 199 has an air source")


def test_a_daily_summary_follows_the_fact_out_of_days_its_build_does_not_name(tmp_path: Path):
    """int_air_quality__station_days (a row per station and local day, read by the air indicators and
    mart) rebuilds its window's days, and also the days the fact changed outside the window: a record
    re-delivered with another day leaves its old day (the fact's post-hook), which a build of the new
    day's window does not name. After such a build the summary must hold exactly the fact's readings,
    counted and summed here in pandas from the fact's rows. (The air readings are keyed by a reading
    number here: keyed by station and time, as usual, a changed time makes another record.)"""
    from orchestration.config import load_config
    from orchestration.dbt_build import bronze_views, build_project

    config, seed = _city_with_air(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    agency, name = next(
        (a, n) for a, ss in cfg["agencies"].items() for n, s in ss.items() if s["feeds"] == "air_quality_observations"
    )
    spec = cfg["agencies"][agency][name]
    folder = config.parent / "drop" / f"{agency}-{name}"
    rows = _read(folder)
    column = _day_column(spec["columns"]["observed_at"], rows)
    for f in sorted(folder.glob("*.csv")):
        part = pd.read_csv(f, dtype=str, keep_default_na=False)
        part.insert(0, "reading_no", [f"{f.stem}-{i}" for i in range(len(part))])
        part.to_csv(f, index=False)
    spec["primary_key"] = ["reading_no"]
    days = sorted({m.group(0) for v in rows[column] if (m := DAY.search(v))})
    start = dt.date.fromisoformat(days[len(days) // 4])
    cfg["partitions"] = {"start": str(start)}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    citylake("run", "--select", "key:bronze/*", config=config, timeout=600)
    city = load_config(config)
    project = build_project(city)
    warehouse = city.state_dir / "warehouse.duckdb"
    bronze_views(city)
    _dbt(project, "seed")
    _dbt(project, "run", "--select", "+tag:daily")

    # a few air readings delivered again, all dated one day, far from their old days
    today = dt.datetime.now(ZoneInfo(city.timezone)).date()
    rows = _read(folder)
    dated = rows[rows[column].str.contains(DAY)]
    target = dt.date.fromisoformat(days[len(days) * 2 // 3])
    assert start + dt.timedelta(days=3) <= target <= today - dt.timedelta(days=3), (start, target, today)
    old = [dt.date.fromisoformat(DAY.search(v).group(0)) for v in dated[column]]
    far = dated[[d > start + dt.timedelta(days=1) and abs((d - target).days) > 4 for d in old]]
    sample = far.sample(n=min(5, len(far)), random_state=seed).copy()
    assert len(sample), "the city should have readings far from the chosen day"
    sample[column] = [_shift(v, (target - dt.date.fromisoformat(DAY.search(v).group(0))).days) for v in sample[column]]
    sample.to_csv(folder / "part-99.csv", index=False)
    citylake("run", "--select", "key:bronze/*", config=config, timeout=600)
    bronze_views(city)

    summary, fact = '"main"."int_air_quality__station_days"', '"main"."fct_air_quality_observations"'
    with duckdb.connect(str(warehouse), read_only=True) as con:
        before = dict(con.execute(f"select partition_date, sum(readings) from {summary} group by 1").fetchall())
    window = {"min_date": str(target - dt.timedelta(days=1)), "max_date": str(target + dt.timedelta(days=1))}
    _dbt(project, "run", "--select", "tag:daily", "--vars", json.dumps(window))

    with duckdb.connect(str(warehouse), read_only=True) as con:
        con.execute("set TimeZone = 'UTC'")
        rows = con.execute(
            f"select partition_date, station_id, district_code, observed_at, pm25, pm10, no2, o3 from {fact}"
        ).df()
        got = con.execute(f"select * exclude (partition_date) from {summary}").df()
    after = {pd.Timestamp(d).date(): n for d, n in rows.groupby("partition_date").size().items()}
    outside = {d: n for d, n in before.items() if not window["min_date"] <= str(d) <= window["max_date"]}
    assert all(after.get(d, 0) <= n for d, n in outside.items()), "outside its window a build only deletes"
    left = {d for d, n in outside.items() if after.get(d, 0) < n}
    assert left, f"no reading left a day outside the window {window} (the case under test did not happen)"
    rows["local_date"] = pd.to_datetime(rows["observed_at"], utc=True).dt.tz_convert(city.timezone).dt.date
    keys = ["station_id", "district_code", "local_date"]
    g = rows.groupby(keys, dropna=False)
    expected = g.size().rename("readings").to_frame()
    for p in ("pm25", "pm10", "no2", "o3"):
        expected[f"{p}_sum"] = g[p].sum()
        expected[f"{p}_count"] = g[p].count()
    expected = expected.reset_index()
    got["local_date"] = pd.to_datetime(got["local_date"]).dt.date
    both = [expected, got]
    for frame in both:
        for p in ("pm25", "pm10", "no2", "o3"):
            frame[f"{p}_sum"] = frame[f"{p}_sum"].fillna(0).astype(float).round(6)
            frame[f"{p}_count"] = frame[f"{p}_count"].astype(int)
        frame["readings"] = frame["readings"].astype(int)
    cols = keys + ["readings"] + [f"{p}_{k}" for p in ("pm25", "pm10", "no2", "o3") for k in ("sum", "count")]
    e, o = (f[cols].astype(str).sort_values(cols).reset_index(drop=True) for f in both)
    pd.testing.assert_frame_equal(o, e, check_dtype=False)
