"""dbt on a cluster engine: the city's dbt project built a second time, with `--target sail`, on Sail
(pysail, a Spark-compatible engine, in local-cluster mode: a driver and workers in threads of this
process) over the same bronze Delta tables the reference city's run (`city_run`) loaded, and every
published table compared with what the DuckDB build published.

Nothing is mocked: the Sail server, dbt-sail and the Delta tables are real. What Sail cannot do is
asserted, not skipped: dbt-spark (which dbt-sail extends) runs Python models only on Databricks, so
orchestration.dbt_sail computes int_district_coordinates itself (test_every_model_builds_on_sail).
"""

from __future__ import annotations

import json
import time

import duckdb
import numpy as np
import pandas as pd
import pytest

from tests.conftest import unavailable
from tests.test_analyst import MARTS as PUBLISHED

#: the models Sail cannot build, with the error it gives: none (see the module's docstring for the
#: Python model, which dbt does not run there)
EXPECTED_FAILURES: dict[str, str] = {}

#: conformed tables (in the warehouse, not published) compared as well
CONFORMED = [
    "fct_air_quality_observations",
    "fct_energy_consumption",
    "fct_road_collisions",
    "fct_service_requests",
    "fct_transit_ridership",
    "fct_waste_collection",
    "quarantine_records",
    "dim_date",
    "dim_district",
]


@pytest.fixture(scope="module")
def sail(city_run):
    try:
        import dbt.adapters.sail  # noqa: F401
        import pysail  # noqa: F401
        import pyspark.sql.connect  # noqa: F401
    except ImportError as exc:
        unavailable(f"the sail extra is not installed ({exc}): pip install -e '.[sail]'")
    from orchestration import dbt_sail
    from orchestration.config import load_config

    started = time.monotonic()
    with dbt_sail.build(load_config(city_run.config)) as build:
        build.seconds = time.monotonic() - started
        yield build


def _comparable(frame: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """`frame`'s values in one form whichever engine gave them: instants and dates (datetime64 in the
    DuckDB frame `like`) as ISO text in UTC, numbers as floats, text as text, nulls as None; rows sorted."""
    out, keys = {}, []
    for name in like.columns:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(like[name]) and not pd.api.types.is_bool_dtype(like[name]):
            out[name] = pd.to_numeric(column).astype(float)
            continue
        if pd.api.types.is_datetime64_any_dtype(like[name]):
            instants = pd.to_datetime(column, utc=True)
            text = instants.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").where(instants.notna(), "")
        else:
            text = column.map(lambda v: "" if v is None or v is pd.NA or (isinstance(v, float) and v != v) else str(v))
        # (null as "", sortable; a text that is "" in one engine and null in the other compares equal)
        out[name] = text.astype(object)
        keys.append(name)
    result = pd.DataFrame(out)
    return result.sort_values(keys).reset_index(drop=True)


def _assert_same(name: str, duck: pd.DataFrame, sail_frame: pd.DataFrame) -> None:
    assert list(sail_frame.columns) == list(duck.columns), f"{name}: columns differ"
    assert len(sail_frame) == len(duck), f"{name}: {len(sail_frame)} rows on Sail, {len(duck)} in DuckDB"
    a, b = _comparable(duck, duck), _comparable(sail_frame, duck)
    for column in a.columns:
        if a[column].dtype == float:
            # exactly, or to 1e-9 (relative, for sums of kWh in a different order)
            same = np.isclose(a[column], b[column], rtol=1e-9, atol=1e-9, equal_nan=True)
        else:
            same = a[column] == b[column]
        assert same.all(), (
            f"{name}.{column}: {int((~same).sum())} rows differ, e.g. DuckDB {a[column][~same].head(3).tolist()} "
            f"vs Sail {b[column][~same].head(3).tolist()}"
        )


def test_every_model_builds_on_sail(sail, city_run):
    """Every model of the DuckDB build (its manifest) is built on Sail, but those listed in
    EXPECTED_FAILURES with their error. int_district_coordinates is a Python model: dbt-spark submits
    Python models to Databricks only, so the `sail` build computes it with the same code
    (orchestration/district_points.py), and dbt builds the rest around it."""
    from dbt.adapters.spark.impl import SparkAdapter

    from orchestration.dbt_sail import POINTS_MODEL

    manifest = json.loads((city_run.state / "dbt" / "target" / "manifest.json").read_text())
    models = {
        n["name"]
        for n in manifest["nodes"].values()
        if n["resource_type"] == "model" and n["config"]["materialized"] != "ephemeral"  # (staging: compiled in)
    }
    assert len(models) > 35 and models <= set(sail.status), sorted(models - set(sail.status))
    failed = {m: sail.message.get(m, "") for m in models if sail.status[m] != "success"}
    assert set(failed) == set(EXPECTED_FAILURES), failed
    for model, error in EXPECTED_FAILURES.items():
        assert error in failed[model]
    # why the Python model is not dbt's to run on Sail: dbt-spark's only ways to run one
    assert set(SparkAdapter.python_submission_helpers.fget(None)) == {"job_cluster", "all_purpose_cluster"}
    assert sail.status[POINTS_MODEL] == "success"
    # (a full build of the small city on 2 cores: ~15 s)
    assert sail.seconds < 120


def test_sail_publishes_the_same_indicators(sail, city_run):
    """The indicators mart, every row: the same indicator x area x period rows and values on Sail."""
    with duckdb.connect(str(city_run.catalog), read_only=True) as con:
        duck = con.sql("select * from indicators").df()
    on_sail = sail.table("indicators")
    assert duck["indicator_id"].nunique() >= 10
    _assert_same("indicators", duck, on_sail)


@pytest.mark.parametrize("name", [m for m in PUBLISHED if m != "indicators"] + CONFORMED)
def test_sail_builds_the_same_tables(sail, city_run, name):
    """Every other published mart (from the catalog) and the conformed tables (from the warehouse)."""
    source = city_run.catalog if name in PUBLISHED else city_run.warehouse
    with duckdb.connect(str(source), read_only=True) as con:
        duck = con.sql(f"select * from {name}").df()
    assert len(duck) > 0, f"{name} is empty in the DuckDB build: nothing would be compared"
    _assert_same(name, duck, sail.table(name))


#: wall times and stamps around America/Chicago's 2025 daylight-saving changes, and offset forms
TIMES = [
    "2025-03-09 02:30:00",  # does not exist (spring forward)
    "2025-03-09 03:30:00",
    "2025-11-02 00:30:00",
    "2025-11-02 01:30:00",  # twice that night (fall back)
    "2025-01-01T10:00:00Z",
    "2025-01-01 10:00:00+02:00",
    "2025-01-01 10:00+02:00",
    "2021-01-01",
    "2025-01-20 08:30",
    "not a time",
]
#: where the `spark__` form of citylake_to_utc reads a text otherwise than the DuckDB form, as
#: (DuckDB's UTC instant, Sail's): Sail's to_utc_timestamp takes the earlier instant of an ambiguous
#: wall time (DuckDB the later, standard-time one, docs/reliability.md), and Sail's timestamp parser
#: refuses an offset after a time without seconds. docs/deploy.md lists both.
TIME_DIFFERENCES = {
    "2025-11-02 01:30:00": ("2025-11-02 07:30:00", "2025-11-02 06:30:00"),
    "2025-01-01 10:00+02:00": ("2025-01-01 08:00:00", None),
}


def test_time_zone_macros_read_the_same_instants_on_sail_but_the_listed_ones(sail, city_run):
    """citylake_to_utc as dbt compiles it for each target, run on its engine over the same texts."""
    from pathlib import Path

    import jinja2

    from orchestration.config import load_config
    from orchestration.dbt_sail import compile_sql

    cfg = load_config(city_run.config)
    assert cfg.timezone == "America/Chicago"
    values = ", ".join(f"('{t}')" for t in TIMES)
    on_sail = compile_sql(city_run.state / "dbt", "{{ citylake_to_utc('raw', 'America/Chicago') }}", "sail")
    sail_rows = dict(
        sail.session.sql(
            f"select raw, date_format({on_sail}, 'yyyy-MM-dd HH:mm:ss') from values {values} as t(raw)"
        ).collect()
    )
    # the DuckDB form rendered as tests/test_keys.py does (no dbt: the warehouse stays closed)
    macros = (Path(__file__).resolve().parent.parent / "dbt_project" / "macros" / "citylake_time.sql").read_text()
    env = jinja2.Environment()
    env.globals["var"] = {"city_timezone": cfg.timezone}.get
    on_duckdb = env.from_string(macros).module.duckdb__citylake_to_utc("raw", "America/Chicago")
    con = duckdb.connect()
    con.execute("set timezone = 'UTC'")
    query = f"select raw, strftime({on_duckdb}, '%Y-%m-%d %H:%M:%S') from (values {values}) as t(raw)"
    duck_rows = dict(con.execute(query).fetchall())
    assert duck_rows["2025-03-09 02:30:00"] == "2025-03-09 08:30:00" and duck_rows["not a time"] is None
    differences = {t: (duck_rows[t], sail_rows[t]) for t in TIMES if duck_rows[t] != sail_rows[t]}
    assert differences == TIME_DIFFERENCES


def test_dbt_cannot_run_the_python_model_on_sail(sail, city_run):
    """What dbt itself says when asked to build int_district_coordinates on Sail (why the `sail` build
    computes it instead). Last in this file: the failed model may drop the table the build wrote."""
    from orchestration.dbt_sail import POINTS_MODEL, SailBuild, run_dbt

    asked = SailBuild(port=sail.port)
    run_dbt(city_run.state / "dbt", asked, "run", "--select", POINTS_MODEL)
    assert asked.status == {POINTS_MODEL: "error"}
    assert "Databricks cluster_id is required for all_purpose_cluster submission method" in asked.message[POINTS_MODEL]
