"""The city's dbt models built on Sail (a Spark-compatible engine, `pip install 'citylake[sail]'`) over
the same bronze Delta tables: the `sail` target of the rendered project (dbt_build.SAIL_OUTPUT).

`build(cfg)` starts a Sail Spark Connect server on 127.0.0.1 (SAIL_MODE local-cluster by default: a
driver and workers scheduling the plan's tasks, in threads of this one process), and runs dbt with
`--target sail` in three steps, as dbt-spark runs Python models only on Databricks:

1. the seeds and every model int_district_coordinates (a Python model) reads;
2. int_district_coordinates itself, computed here by orchestration.district_points (the code the
   DuckDB build's Python model runs) from the tables of step 1, written to Sail's catalog;
3. every other model (all but int_district_coordinates and its ancestors).

Nothing is published: the tables live in Sail's catalog (schema `citylake`, files under
<state_dir>/sail/), read back through Spark Connect (`table()`). docs/deploy.md, "dbt on a cluster engine
(Sail)", says what runs and what does not.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from orchestration.config import CityConfig
from orchestration.dbt_build import SAIL_PORT_ENV, build_project, dbt_env

#: the models int_district_coordinates reads (its refs, as in the model)
UNIONED = [
    "int_air_quality_observations__unioned",
    "int_service_requests__unioned",
    "int_road_collisions__unioned",
    "int_transit_ridership__unioned",
    "int_energy_consumption__unioned",
    "int_waste_collection__unioned",
]
POINTS_MODEL = "int_district_coordinates"
SCHEMA = "citylake"


@dataclass
class SailBuild:
    """What a build on Sail did: each dbt node's status ('success', 'error', 'skipped') and message."""

    port: int
    status: dict[str, str] = field(default_factory=dict)
    message: dict[str, str] = field(default_factory=dict)
    session: object = None
    server: object = None

    def table(self, name: str):
        """A built table as a pandas DataFrame (read through Spark Connect)."""
        return self.session.table(f"{SCHEMA}.{name}").toPandas()

    #: the environment variables the build set, with the values they had before
    environ: dict[str, str | None] = field(default_factory=dict)

    def close(self) -> None:
        """Stop the Spark Connect session and the Sail server (a running server keeps the process alive),
        and put back the environment variables the build set."""
        self.session.stop()
        self.server.stop()
        for name, value in self.environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def __enter__(self) -> SailBuild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(workdir: Path, mode: str = "local-cluster"):
    """A Sail Spark Connect server in this process on 127.0.0.1 (a free port), its files under `workdir`."""
    # Sail's catalog lives in the server's memory: the files of an earlier server's tables are orphans,
    # and a table created again over their folder would read them too
    shutil.rmtree(workdir / "spark-warehouse", ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["SAIL_MODE"] = mode
    from pysail.spark import SparkConnectServer

    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    return server


def run_dbt(project: Path, build: SailBuild, *args: str) -> None:
    """dbt `args` with --target sail, in this process: its Spark Connect session is the build's, whose
    catalog holds the tables of the earlier steps (Sail's catalog is per session)."""
    from dbt.cli.main import dbtRunner

    target = project / "target" / "sail"
    res = dbtRunner().invoke(
        [
            *args,
            "--target", "sail",
            "--project-dir", str(project),
            "--profiles-dir", str(project),
            # dbt's own files for this target apart from the DuckDB build's (target/manifest.json)
            "--target-path", str(target),
            "--log-path", str(target / "logs"),
        ]
    )
    if res.exception is not None:
        raise RuntimeError(f"dbt {' '.join(args)} on Sail failed to run: {res.exception}")
    for r in res.result or []:
        build.status[r.node.name] = str(r.status)
        build.message[r.node.name] = r.message or ""


def build(cfg: CityConfig, mode: str = "local-cluster") -> SailBuild:
    """Build the city's dbt project on a Sail server started here; see the module's docstring. Use the
    result as a context manager (`with build(cfg) as b:`): it stops the server when done."""
    from pyspark.sql import SparkSession

    project = build_project(cfg)
    dbt_env()
    environ = {name: os.environ.get(name) for name in ("SAIL_MODE", SAIL_PORT_ENV)}
    server = start_server(cfg.state_dir / "sail", mode)
    _, port = server.listening_address
    os.environ[SAIL_PORT_ENV] = str(port)
    session = SparkSession.builder.remote(f"sc://127.0.0.1:{port}").getOrCreate()
    session.conf.set("spark.sql.session.timeZone", "UTC")
    # managed tables' files (else spark-warehouse/ in the working directory)
    session.conf.set("spark.sql.warehouse.dir", str(cfg.state_dir / "sail" / "spark-warehouse"))
    result = SailBuild(port=port, session=session, server=server, environ=environ)
    try:
        _steps(project, result)
    except BaseException:
        result.close()
        raise
    return result


def _steps(project: Path, result: SailBuild) -> None:
    """The three steps of build() (the module's docstring)."""
    import pandas as pd

    from orchestration.district_points import place

    session = result.session
    run_dbt(project, result, "seed")
    run_dbt(project, result, "run", "--select", f"+{POINTS_MODEL}", "--exclude", POINTS_MODEL)
    if all(result.status.get(m) == "success" for m in [*UNIONED, "dim_district"]):
        districts = session.sql(f"select district_code as code, geometry_wkt from {SCHEMA}.dim_district").toPandas()
        points = pd.concat(
            [
                session.sql(
                    f"select distinct district_lat as latitude, district_lon as longitude from {SCHEMA}.{name} "
                    "where district_method = 'coordinates' and district_lat is not null and district_lon is not null"
                ).toPandas()
                for name in UNIONED
            ],
            ignore_index=True,
        )
        placed = place(districts, points)
        frame = session.createDataFrame(placed, "latitude double, longitude double, district_code string")
        frame.write.mode("overwrite").saveAsTable(f"{SCHEMA}.{POINTS_MODEL}")
        result.status[POINTS_MODEL] = "success"
    else:
        result.status[POINTS_MODEL] = "skipped"
        result.message[POINTS_MODEL] = "an upstream model failed on Sail"
    run_dbt(project, result, "run", "--exclude", f"+{POINTS_MODEL}")


def compile_sql(project: Path, sql: str, target: str) -> str:
    """`sql` (with the project's macros) as dbt compiles it for `target` ('city': DuckDB, 'sail')."""
    from dbt.cli.main import dbtRunner

    dbt_env()
    res = dbtRunner().invoke(
        [
            "compile", "--quiet", "--inline", sql,
            "--target", target,
            "--project-dir", str(project),
            "--profiles-dir", str(project),
            "--target-path", str(project / "target" / target),
            "--log-path", str(project / "target" / target / "logs"),
        ]
    )
    if not res.success:
        raise RuntimeError(f"dbt compile --target {target} failed: {res.exception}")
    return res.result.results[0].node.compiled_code
