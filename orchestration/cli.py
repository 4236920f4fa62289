"""`citylake`: what people do from a terminal. Every command takes --config PATH.

demo        generate the reference city, run everything, print the indicators and where to query them
generate    write the reference city's sources (and its ground truth) beside city.yaml
run         materialize assets through Dagster (the UI's code path); --select takes Dagster's syntax
sql         read-only SQL over the published analyst catalog
check       validate city.yaml and test each source's connectivity
status      each source's last load, rows, freshness and gates; the latest publication
quarantine  held-back records counted by source and reason, with samples
listen      subscribe to the MQTT sources and land their messages for ingestion
dev         open the Dagster UI on this project (and the docs server its links use)
worker      a Celery worker running steps of citylake runs (CITYLAKE_EXECUTOR=celery; docs/deploy.md)
docs        build the dbt docs and GX Data Docs and serve them with the report on 127.0.0.1
publish-open-data  write the indicators and marts as an open-data package (CSV, Parquet, DCAT-AP)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import click

from orchestration.config import PII_KEY_ENV, CityConfig, ConfigError, Source, config_path, load_config

CONFIG_OPTION = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="city.yaml to use (default: $CITYLAKE_CONFIG, else ./city.yaml)",
)


def _load(config: str | None) -> CityConfig:
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    # the code location reads the same file, in this process and in any it starts
    os.environ["CITYLAKE_CONFIG"] = str(cfg.path)
    from orchestration.city import dagster_home

    os.environ["DAGSTER_HOME"] = str(dagster_home(cfg))
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
    os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    from orchestration.instance_storage import bounded_bookkeeping

    bounded_bookkeeping()
    demo_pii_key(cfg, create=False)
    from orchestration import workers

    try:
        if workers.uses_workers():  # the code location would fail on it at import, less clearly
            workers.celery_config()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    return cfg


def demo_pii_key(cfg: CityConfig, create: bool) -> None:
    """CITYLAKE_PII_KEY from the key `citylake demo` made for this install, when the environment has none.

    The personal-data HMAC key comes from the environment. Only so that `make demo` (and the `run`,
    `dev` and `check` that follow it on the same config) work without exporting anything, `citylake
    demo` writes a random key to <state_dir>/pii.key (mode 600) when the variable is unset and says so;
    no other command creates that file, so a real city that exports nothing gets a clear error instead.
    """
    if os.environ.get(PII_KEY_ENV) or not any(s.personal_data["hash"] for s in cfg.sources):
        return
    path = cfg.state_dir / "pii.key"
    if not path.exists():
        if not create:
            return
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        click.echo(
            f"{PII_KEY_ENV} is not set: personal data is hashed with a key made for this demo, kept in {path}; "
            f"a real city exports {PII_KEY_ENV} (docs/cities.md, Personal data)"
        )
    os.environ[PII_KEY_ENV] = path.read_text().strip()


def served_by_simulator(source: Source, port: int) -> bool:
    """Whether the source reads a simulator listening on this loopback port (its url names it)."""
    if source.kind != "http_json":
        return False
    url = urlparse(str(source.get("url") or ""))
    try:
        return url.hostname in LOOPBACK and url.port == port
    except ValueError:  # a port that is not a number: the source is not ours to serve
        return False


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@contextlib.contextmanager
def simulators(cfg: CityConfig, needed_by: Iterable[Source] | None = None, reuse: bool = True) -> Iterator[None]:
    """Serve the agency systems the reference city simulates (Riverton's Open311 API) for the block.

    Only the simulators one of `needed_by` reads (None: every source of the city) start. A port
    already served by this city's simulator (`make dev`, another citylake command) is reused when
    `reuse`; anything else on the port is an error that says what answers there.
    """
    with contextlib.ExitStack() as stack:
        open311 = cfg.simulators.get("open311")
        port = int((open311 or {}).get("port", 8311))
        sources = cfg.sources if needed_by is None else list(needed_by)
        if open311 and any(served_by_simulator(s, port) for s in sources):
            from orchestration.config import resolve_path
            from orchestration.reference_city import probe_open311, running_open311

            data = Path(resolve_path(cfg.base_dir, str(open311["data"]))).resolve()
            if not data.exists():
                raise click.ClickException(f"simulators.open311.data: {data} does not exist; run `citylake generate`")
            try:
                stack.enter_context(running_open311(data, port=port))
            except OSError as exc:
                where = f"simulators.open311: 127.0.0.1:{port} is taken ({exc.strerror or exc})"
                running, what = probe_open311(port)
                if running is None:
                    raise click.ClickException(
                        f"{where} by a program that is not citylake's Open311 simulator: {what}; stop it, or "
                        "move simulators.open311.port and the url of the sources that read it to a free port"
                    ) from None
                if Path(running["data"]) != data:
                    raise click.ClickException(
                        f"{where} by the Open311 simulator of another city (it serves {running['data']}, this "
                        f"city's is {data}); stop that citylake, or give this city another simulators.open311.port"
                    ) from None
                if not reuse:
                    raise click.ClickException(
                        f"{where} by this city's Open311 simulator, started by another citylake command that "
                        "stops it when it ends; start this one again once it has"
                    ) from None
                click.echo(
                    f"simulators.open311: reusing this city's simulator already running on 127.0.0.1:{port}", err=True
                )
        yield


class CityGroup(click.Group):
    """Commands listed in the order people use them (others after, as defined), one line each."""

    ORDER = ("demo", "generate", "check", "run", "status", "quarantine", "sql", "listen", "dev")

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [c for c in self.ORDER if c in self.commands] + [c for c in self.commands if c not in self.ORDER]

    def invoke(self, ctx: click.Context):
        # a lake on object storage that cannot be reached: its one-paragraph reason, not a traceback
        from orchestration.lake import LakeError

        try:
            return super().invoke(ctx)
        except LakeError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=CityGroup, context_settings={"max_content_width": 100})
def main() -> None:
    """citylake: a city's agency data in one lakehouse, checked, with its ISO 37120 indicators.

    Every command takes --config PATH (default: $CITYLAKE_CONFIG, else ./city.yaml, else the
    reference city); `citylake COMMAND --help` tells more.
    """
    # libraries log at INFO through the root logger; the terminal gets citylake's own progress lines
    logging.basicConfig(level=logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    for name in ("dagster", "great_expectations"):
        logging.getLogger(name).setLevel(logging.WARNING)


@main.command(short_help="write the reference city's agency sources (seeded)")
@CONFIG_OPTION
@click.option("--scale", type=float, default=1.0, show_default=True, help="size of the city (10+ for benchmarks)")
@click.option("--days", type=int, default=90, show_default=True, help="days of history")
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), default="2025-01-01", show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="where to write (default: reference_city/ beside the config file)",
)
def generate(config: str | None, scale: float, days: int, start: dt.datetime, seed: int, out: str | None) -> None:
    """Write the reference city's agency sources, deterministic from the seed."""
    from orchestration.reference_city import generate as gen

    target = Path(out) if out else config_path(config).parent / "reference_city"
    t0 = time.perf_counter()
    summary = gen(target, scale=scale, days=days, start=start.date(), seed=seed)
    total = sum(v["clean"] + v["bad"] for v in summary["sources"].values())
    click.echo(
        f"Generated Riverton at scale {scale:g}, {days} days from {start.date()} into {target}: "
        f"{total:,} records in {len(summary['sources'])} sources, {summary['bad_records']} deliberately "
        f"bad ({time.perf_counter() - t0:.1f} s)"
    )


def run_assets(
    cfg: CityConfig,
    select: str | None,
    first: dt.date | None = None,
    last: dt.date | None = None,
    rebuild: bool = False,
) -> bool:
    """Materialize the selection through Dagster (see `_run_assets`) in a warm dbt server's block: when the
    run first needs dbt (the project's parse, a dbt step), dbt is imported once, in the server, and every
    dbt process of the run forks from it (orchestration/warm_dbt.py)."""
    from orchestration.dbt_build import parsed
    from orchestration.warm_dbt import warm_dbt_server

    # started at once when dbt will surely run: a rebuild, named days, or a project not parsed yet
    with warm_dbt_server(now=rebuild or first is not None or last is not None or not parsed(cfg)):
        return _run_assets(cfg, select, first, last, rebuild)


def _run_assets(
    cfg: CityConfig,
    select: str | None,
    first: dt.date | None,
    last: dt.date | None,
    rebuild: bool,
) -> bool:
    """Materialize the selection (everything when None) through Dagster, recorded in DAGSTER_HOME.

    The daily-partitioned assets rebuild the days first..last in one run. With no days named, the
    bronze loads (and the reference data) run first, then the daily assets rebuild every day the
    bronze data covers and everything downstream follows, in a second run; what a failed bronze gate
    guards is left out of it, as it would be inside one run. When nothing the downstream assets are
    computed from changed since the last complete run (orchestration/up_to_date.py), a plain run
    stops after its loads, unless `rebuild`.
    """
    import dagster as dg

    from orchestration.dbt_build import districts_status

    readable, problem = districts_status(cfg)
    if not readable:  # (the definitions would fail on it at import, inside Dagster's traceback)
        raise click.ClickException(problem)
    from orchestration import up_to_date
    from orchestration.definitions import defs, everything_job

    # what is imported by now (Dagster, the definitions, pandas, pyarrow, ...) lives as long as the process:
    # moved out of the garbage collector's sight, the collections during the run and the one at exit
    # skip it (the exit's took about 1 s after every `citylake run`)
    gc.freeze()
    from orchestration.defs.transform.assets import dbt_reference
    from orchestration.partitions import ALL_DATA_TAG, data_days, full_range, range_tags
    from orchestration.progress import progress_logger
    from orchestration.run_recovery import process_tags, recover_abandoned_runs
    from orchestration.status import indicators_snapshot, run_summary
    from orchestration.workers import uses_workers

    every_first, every_last = full_range(cfg)
    if (first or last) and cfg.partitions_start is None:
        raise click.ClickException(
            "--partition/--from/--to: this city has no daily partitions (no partitions: key in city.yaml), so "
            "every run rebuilds every day; run without them, or set partitions: {start: YYYY-MM-DD}"
        )
    if first or last:
        first, last = first or every_first, last or every_last
        if first < every_first or last > every_last or last < first:
            raise click.ClickException(
                f"days {first}..{last}: the daily partitions run from {every_first} (partitions.start in "
                f"city.yaml) to {every_last} (today in {cfg.timezone}); a range must not end before it starts"
            )
    job = defs.resolve_job_def("everything").with_logger_defs({"progress": progress_logger})
    graph = defs.resolve_asset_graph()
    keys = set(graph.get_all_asset_keys())
    if select:
        try:
            keys = set(dg.AssetSelection.from_string(select).resolve(graph))
        except Exception as exc:  # noqa: BLE001 - Dagster raises several types for a bad selection string
            raise click.ClickException(f"--select {select!r}: {exc}") from None
        if not keys:
            raise click.ClickException(f"--select {select!r} matches no asset; see `dagster asset list` or the UI")
    daily = {k for k in keys if graph.get(k).partitions_def is not None}
    # what the daily assets read (bronze loads, reference data): run first when no days are named
    before = set(dg.AssetSelection.assets(*daily).upstream().resolve(graph)) & keys - daily if daily else set()
    log_dir = cfg.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"run-{dt.datetime.now():%Y%m%d-%H%M%S}.log"
    click.echo(
        f"Running {len(keys)} assets of {cfg.name} through Dagster (DAGSTER_HOME={os.environ['DAGSTER_HOME']}); "
        f"dbt's full log: {log_path}"
    )
    if uses_workers():
        click.echo(
            "Steps run on the Celery workers (CITYLAKE_EXECUTOR=celery): their progress is in the workers' logs "
            "and the UI; this terminal prints each run's outcome and the summary."
        )
    # dbt's own lines go to the log file (and to the Dagster UI); the terminal shows one line per asset
    loads = [s for s in cfg.sources if dg.AssetKey(["bronze", s.agency, s.name]) in keys]
    results: list = []
    snapshot = indicators_snapshot(cfg, log_dir)
    with simulators(cfg, loads), dg.DagsterInstance.get() as instance, open(log_path, "w") as log:
        # runs of a killed `citylake run` would otherwise stay STARTED and hold their pool slots
        recover_abandoned_runs(instance, log=lambda m: click.echo(m, err=True))

        def execute(selection: set[dg.AssetKey], tags: dict[str, str]) -> tuple[bool, set[dg.AssetKey]]:
            with contextlib.redirect_stdout(log):
                if uses_workers():  # this process submits the steps; the workers run them
                    # Dagster's own log of the run (each step submitted to its queue) goes to the log file
                    with contextlib.redirect_stderr(log):
                        result = dg.execute_job(
                            dg.reconstructable(everything_job),
                            instance=instance,
                            asset_selection=sorted(selection, key=str),
                            raise_on_error=False,
                            tags={**process_tags(), **tags},
                        )
                else:
                    result = job.execute_in_process(
                        instance=instance,
                        asset_selection=sorted(selection, key=str),
                        raise_on_error=False,
                        run_config={"loggers": {"progress": {}}},
                        tags={**process_tags(), **tags},
                    )
            results.append(result)
            ok, failed = _report(result)
            done = {e.asset_key for e in result.get_asset_materialization_events()}
            return ok, failed | (selection - done)

        def everything() -> bool:
            nonlocal first, last, before
            plain = select is None and first is None
            if not plain or (not daily and not any(k.path[0] == "bronze" for k in keys)):
                days = {} if not daily else range_tags(first, last)
                _echo_days(first, last, daily)
                up_to_date.forget(cfg)
                return execute(keys, days)[0]
            if not daily:  # an unpartitioned city: its loads, then everything else
                before = {k for k in keys if k.path[0] == "bronze"}
            # the reference data is computed from the definition alone: kept as built when that is unchanged
            kept = set() if rebuild or not up_to_date.reference_built(cfg) else set(dbt_reference.keys) & keys
            before -= kept
            ok, failed = True, set()
            if before:
                ok, failed = execute(before, {})
            loads_finished = dt.datetime.now(dt.UTC)
            now = up_to_date.fingerprint(cfg)
            record = None if rebuild else up_to_date.last_complete(cfg)
            same = ok and not rebuild and up_to_date.unchanged_since_last_complete_run(cfg, now)
            if same:
                click.echo(
                    f"Nothing new since the complete run {same['run_id']} ({same['finished']}): no load committed "
                    "anything and nothing that defines the models changed, so the models, indicators and published "
                    "catalog are up to date. `citylake run --rebuild` rebuilds them anyway."
                )
                return True
            up_to_date.forget(cfg)
            # what a failed bronze gate guards; publication is one step, so it goes whole
            blocked = set()
            if failed:
                guarded = dg.AssetSelection.assets(*failed).downstream().required_multi_asset_neighbors()
                blocked = set(guarded.resolve(graph))
            rest = keys - before - kept - blocked
            if not rest:
                return ok
            tags = {}
            if daily:  # the days the new loads touched, or (no usable record) every day the data covers
                window = up_to_date.touched_days(cfg, record, now)
                first, last = window or data_days(cfg) or (every_last, every_last)
                _echo_days(first, last, daily)
                tags = {**range_tags(first, last), **({ALL_DATA_TAG: "true"} if window is None else {})}
            rest_ok = execute(rest, tags)[0]
            if ok and rest_ok:
                up_to_date.record_complete_run(cfg, now, results[-1].run_id, loads_finished)
            return ok and rest_ok

        try:
            ok = everything()
        except BaseException:
            if snapshot is not None:
                snapshot.unlink(missing_ok=True)
            raise
    click.echo(run_summary(cfg, [e for r in results for e in r.all_events], snapshot))
    return ok


def _echo_days(first: dt.date | None, last: dt.date | None, daily: set) -> None:
    if daily:
        click.echo(f"Daily partitions {first}{'' if first == last else f'..{last}'}: {len(daily)} assets, one run")


def _report(result) -> tuple[bool, set]:
    """Print a run's failures (step errors and failed checks, with their root cause) and its outcome;
    returns whether it succeeded and the assets whose check failed or raised (the assets
    whose step failed are the ones the run did not materialize; `execute` adds those)."""
    import dagster as dg

    failed = [
        e
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
        or (e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed)
    ]
    for e in failed:
        data = e.event_specific_data
        why = _root_cause(data.error) if getattr(data, "error", None) else (getattr(data, "description", "") or "")
        click.echo(f"  FAILED {e.step_key or ''}: {why}", err=True)
    ok = result.success and not failed
    click.echo(f"Run {result.run_id} {'succeeded' if ok else 'FAILED'}.")
    checks = {e.event_specific_data.asset_key for e in failed if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    # a check step that raised has no evaluation: its asset is not vouched for either
    layer = result.job_def.asset_layer
    for e in failed:
        if e.event_type_value == "STEP_FAILURE" and e.node_handle is not None:
            keys = layer.get_selected_entity_keys_for_node(e.node_handle)
            checks |= {k.asset_key for k in keys if isinstance(k, dg.AssetCheckKey)}
    return ok, checks


def _root_cause(error) -> str:
    """The innermost error of a Dagster step failure: the one that says what went wrong."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip()


@main.command(short_help="materialize assets through Dagster; say what changed")
@CONFIG_OPTION
@click.option(
    "--select",
    default=None,
    help="Dagster asset selection, e.g. 'bronze/transport/ridership' or 'key:marts/*'; default: everything",
)
@click.option("--partition", "day", type=click.DateTime(["%Y-%m-%d"]), help="rebuild one day (YYYY-MM-DD, city time)")
@click.option("--from", "first", type=click.DateTime(["%Y-%m-%d"]), help="first day of a range to rebuild")
@click.option("--to", "last", type=click.DateTime(["%Y-%m-%d"]), help="last day of the range (default: today)")
@click.option(
    "--rebuild",
    is_flag=True,
    help="rebuild the models, indicators and publication even when nothing they are computed from changed",
)
def run(
    config: str | None,
    select: str | None,
    day: dt.datetime | None,
    first: dt.datetime | None,
    last: dt.datetime | None,
    rebuild: bool,
) -> None:
    """Materialize assets through Dagster (same code path as the UI).

    The daily-partitioned assets (the per-entity intermediate models and the conformed facts) rebuild
    every day since partitions.start, or only --partition DAY, or the days --from .. --to, in one run.
    """
    if day and (first or last):
        raise click.UsageError("give either --partition or --from/--to, not both")
    if day:
        first = last = day
    cfg = _load(config)
    if not run_assets(cfg, select, first and first.date(), last and last.date(), rebuild):
        sys.exit(1)


@main.command(short_help="generate the reference city, run it, print its indicators")
@CONFIG_OPTION
@click.option("--scale", type=float, default=1.0, show_default=True)
@click.option("--days", type=int, default=90, show_default=True)
def demo(config: str | None, scale: float, days: int) -> None:
    """Generate the reference city, run the whole pipeline, and print the indicators."""
    ctx = click.get_current_context()
    ctx.invoke(generate, config=config, scale=scale, days=days, start=dt.datetime(2025, 1, 1), seed=42, out=None)
    cfg = _load(config)
    demo_pii_key(cfg, create=True)
    t0 = time.perf_counter()
    if not run_assets(cfg, None):
        sys.exit(1)
    from orchestration.report import summary

    click.echo(f"Pipeline finished in {time.perf_counter() - t0:.0f} s.\n")
    click.echo(summary(cfg))


@main.command(short_help="read-only SQL over the published analyst catalog")
@CONFIG_OPTION
@click.argument("query", required=False)
@click.option("-f", "--file", "file", type=click.File("r"), help="read the query from a file")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=None,
    help="print at most this many rows [default: 10000; 0: all rows]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="stop the query after this many seconds (0: no limit)",
)
@click.option("--memory-limit", default="2GB", show_default=True, help="memory the query may use, e.g. 500MB, 8GB")
@click.option(
    "--raw-csv",
    is_flag=True,
    help="CSV values exactly as stored; by default text starting with = + - @ is prefixed with ' for spreadsheets",
)
def sql(
    config: str | None,
    query: str | None,
    file,
    fmt: str,
    limit: int | None,
    timeout: float,
    memory_limit: str,
    raw_csv: bool,
) -> None:
    """Query the published marts (read-only) from the analyst catalog; see docs/analysts.md."""
    from orchestration.analyst import DEFAULT_LIMIT, QueryError, execute

    cfg = _load(config)
    if file and query:
        raise click.ClickException("give the query as an argument or with -f FILE, not both")
    text = file.read() if file else query
    if not text:
        raise click.ClickException('give a query: citylake sql "select ..." or citylake sql -f query.sql')
    limit = DEFAULT_LIMIT if limit is None else limit
    try:
        printed = execute(
            cfg.catalog_path,
            text,
            lambda chunk: click.echo(chunk, nl=False),
            fmt=fmt,
            limit=limit,
            timeout=timeout,
            memory_limit=memory_limit,
            safe_csv=not raw_csv,
        )
    except QueryError as exc:
        raise click.ClickException(str(exc)) from None
    if printed.cut:
        click.echo(
            f"citylake sql: showed the first {printed.rows} rows; the query returns more "
            "(--limit N for more, --limit 0 for all)",
            err=True,
        )


@main.command(short_help="validate city.yaml and test every source before a run")
@CONFIG_OPTION
def check(config: str | None) -> None:
    """Validate city.yaml and find, source by source, what a run would fail on (secrets never printed).

    Each source is reached and its columns read: its primary key and cursor must be there, and every
    `columns:`/`district:` value must bind to them. FAIL (exit 1): the run would fail or load nothing
    from the source. WARN (exit 0): nothing to check yet, such as a drop folder with no file.
    """
    from orchestration import lake
    from orchestration.connectivity import FAIL, WARN, lake_status, source_status
    from orchestration.dbt_build import districts_status
    from orchestration.ingest import META_COLUMNS

    cfg = _load(config)
    click.echo(f"{cfg.path}: valid ({len(cfg.sources)} sources, lake {cfg.lake_root})")
    counts = {FAIL: 0, WARN: 0}
    lake_failed = False
    readable, detail = districts_status(cfg)
    click.echo(f"  {'ok  ' if readable else 'FAIL'} {'districts':<40} {detail}")
    if cfg.is_remote:
        status, detail = lake_status(cfg)
        lake_failed = status == FAIL
        click.echo(f"  {'FAIL' if lake_failed else 'ok  '} {'lake ' + cfg.lake_root:<40} {detail}")
    with simulators(cfg):
        for source in cfg.sources:
            try:
                # an unreachable lake was said above (each read would wait for the store's retries again)
                schema = None if lake_failed else lake.schema(lake.bronze_uri(cfg, source.agency, source.name))
            except Exception:  # noqa: BLE001 - an unreadable lake is the run's to report; check the source alone
                schema = None
            bronze = [n for n in schema.names if n not in META_COLUMNS] if schema is not None else []
            status, detail = source_status(source, bronze)
            counts[status] = counts.get(status, 0) + 1
            label = {FAIL: "FAIL", WARN: "WARN"}.get(status, "ok  ")
            first, *more = detail.split("\n")
            click.echo(f"  {label} {source.key:<40} {first}")
            for line in more:
                click.echo(f"       - {line}")
    failing = [
        *(["the lake"] if lake_failed else []),
        *([] if readable else ["the districts"]),
        *([f"{counts[FAIL]} source(s)"] if counts[FAIL] else []),
    ]
    if failing:
        raise click.ClickException(
            " and ".join(failing)
            + " would fail a run (see FAIL above)"
            + (f"; {counts[WARN]} warning(s)" if counts[WARN] else "")
        )
    if counts[WARN]:
        click.echo(f"{counts[WARN]} warning(s), no error: a run can start")


@main.command(short_help="each source's last load, rows, freshness and gates")
@CONFIG_OPTION
def status(config: str | None) -> None:
    """Show each source's last load, rows, freshness and gates, and the latest publication.

    Read from the lake's Delta logs, the Dagster instance and the published catalog (no table is
    scanned). Freshness: the last load against the source's freshness.max_delay_hours (default 26 h).
    Exit 1 when a source was never loaded, is late or failed its gate, or a later gate failed.
    """
    from orchestration.status import format_status

    cfg = _load(config)
    text, well = format_status(cfg)
    click.echo(text, nl=False)
    if not well:
        sys.exit(1)


@main.command(short_help="held-back records counted by source and reason")
@CONFIG_OPTION
@click.option("--source", default=None, metavar="AGENCY/SOURCE", help="only this source's records")
@click.option("--reason", default=None, metavar="TEXT", help="only records whose reason contains TEXT (any case)")
@click.option("--rows", type=click.IntRange(min=0), default=0, help="also show up to this many held-back records")
def quarantine(config: str | None, source: str | None, reason: str | None, rows: int) -> None:
    """Count the records held back from the lake, by source and reason (from the published catalog)."""
    from orchestration.status import NothingPublished, quarantine_counts, quarantine_rows

    cfg = _load(config)
    if source and source not in {s.key for s in cfg.sources}:
        raise click.ClickException(
            f"--source {source}: not a source of {cfg.path}; sources are {', '.join(s.key for s in cfg.sources)}"
        )
    try:
        counts = quarantine_counts(cfg, source, reason)
        sample = quarantine_rows(cfg, rows, source, reason) if rows else []
    except NothingPublished as exc:
        raise click.ClickException(str(exc)) from None
    total = sum(c[3] for c in counts)
    what = " and ".join(filter(None, [source and f"source {source}", reason and f"reason containing {reason!r}"]))
    click.echo(f"{total:,} records held back{f' ({what})' if what else ''}, published in {cfg.catalog_path}")
    if counts:
        width = max(len(c[1]) for c in counts)
        click.echo(f"  {'records':>9}  {'layer':<9}  {'source':<{width}}  reason")
        for layer, key, why, n in counts:
            click.echo(f"  {n:>9,}  {layer:<9}  {key:<{width}}  {why}")
    for layer, key, record_key, why, record, ingested in sample:
        click.echo(f"\n{layer} {key} {record_key} ({ingested:%Y-%m-%d %H:%M}): {why}")
        if record:
            click.echo(f"  {record if len(record) <= 500 else record[:500] + ' ...'}")


@main.command(short_help="land the MQTT sources' messages for ingestion")
@CONFIG_OPTION
@click.option(
    "--source", "only", multiple=True, help="agency/source to listen to (repeatable); default: every mqtt source"
)
@click.option("--flush-seconds", type=float, default=5.0, show_default=True, help="longest a message waits to land")
@click.option("--batch-size", type=int, default=1000, show_default=True, help="most messages per batch file")
@click.option("--idle-seconds", type=float, default=0.3, show_default=True, help="flush after a pause this long")
@click.option("--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")
def listen(
    config: str | None,
    only: tuple[str, ...],
    flush_seconds: float,
    batch_size: int,
    idle_seconds: float,
    duration: float | None,
) -> None:
    """Subscribe to the MQTT sources and land their messages as batch files (at-least-once)."""
    from orchestration.listen import listen as run_listener

    cfg = _load(config)
    sources = [s for s in cfg.sources if s.kind == "mqtt" and (not only or s.key in only)]
    unknown = sorted(set(only) - {s.key for s in sources})
    if unknown:
        raise click.ClickException(f"--source {', '.join(unknown)}: not an mqtt source in {cfg.path}")
    if not sources:
        raise click.ClickException(f"{cfg.path} declares no mqtt source; add one with kind: mqtt")

    def log(message: str) -> None:
        click.echo(f"{dt.datetime.now():%H:%M:%S} {message}", err=True)

    try:
        n = run_listener(
            sources,
            flush_seconds=flush_seconds,
            batch_size=batch_size,
            duration=duration,
            log=log,
            idle_seconds=idle_seconds,
        )
    except (ConnectionError, ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Landed {n} messages.")


def _serve_docs_beside_ui(cfg: CityConfig) -> None:
    """The docs server (report, Data Docs, dbt docs) the UI's links point at, on $CITYLAKE_DOCS_PORT (3080)."""
    from orchestration import docs_site

    try:
        docs_site.serve_in_background(cfg)
    except OSError as exc:
        click.echo(
            f"docs server not started on 127.0.0.1:{docs_site.docs_port()} ({exc}); the UI's report and "
            f"Data Docs links need it: set {docs_site.PORT_ENV} to a free port",
            err=True,
        )
        return
    click.echo(f"Report and Data Docs: http://127.0.0.1:{docs_site.docs_port()}/ (dbt docs: citylake docs --no-serve)")


@main.command(short_help="a Celery worker that runs the steps of runs")
@CONFIG_OPTION
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    help="a queue to consume (repeat for more): `dagster` (default queue), `warehouse` (dbt, model gates, "
    "publication: one process), `agency.<agency>` (that agency's loads); default: dagster and every agency's",
)
@click.option("--concurrency", "-c", type=int, default=None, help="worker processes (default: one per core)")
@click.option("--name", "-n", default=None, help="worker name (default: dagster-<random>); @<host> is appended")
def worker(config: str | None, queues: tuple[str, ...], concurrency: int | None, name: str | None) -> None:
    """Run a Celery worker that executes the steps of citylake runs (dagster-celery's worker, started
    with orchestration/instance/celery.yaml and this city's config and Dagster instance)."""
    from orchestration import workers

    os.environ[workers.EXECUTOR_ENV] = "celery"  # the code location this worker loads defines the same executor
    cfg = _load(config)  # and checks the Celery settings
    queues = queues or (workers.DEFAULT_QUEUE, *sorted({workers.agency_queue(s.agency) for s in cfg.sources}))
    if workers.WAREHOUSE_QUEUE in queues and concurrency != 1:
        if concurrency is not None:
            raise click.ClickException(
                f"--queue {workers.WAREHOUSE_QUEUE}: the DuckDB warehouse takes one process; start this worker "
                "with --concurrency 1 (other queues in a worker of their own)"
            )
        concurrency = 1
    home = os.environ["DAGSTER_HOME"]
    # workers started together would each create a new SQLite instance's tables (and fail): one at a time
    import fcntl

    import dagster as dg

    with open(Path(home) / ".worker-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        dg.DagsterInstance.get().dispose()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}  # dagster-celery runs `celery`
    # one -q with every queue, comma-separated (Celery's own syntax; dagster-celery refuses more than four -q)
    args = [str(Path(bin_dir) / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
    args += ["-y", str(workers.celery_config_path()), "-q", ",".join(queues)]
    args += ["-n", name] if name else []
    args += ["--", "--concurrency", str(concurrency)] if concurrency else []
    click.echo(f"Celery worker for {cfg.name} on queues {', '.join(queues)} (DAGSTER_HOME={home})")
    os.execve(args[0], args, env)


@main.command(short_help="open the Dagster UI on this project")
@CONFIG_OPTION
@click.option("--port", type=int, default=3000, show_default=True)
def dev(config: str | None, port: int) -> None:
    """Open the Dagster UI on this project (http://127.0.0.1:PORT)."""
    cfg = _load(config)
    import dagster as dg

    from orchestration.run_recovery import recover_abandoned_runs

    with dg.DagsterInstance.get() as instance:
        recover_abandoned_runs(instance, log=lambda m: click.echo(m, err=True))
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    _serve_docs_beside_ui(cfg)
    # the UI's runs load every source: its simulators live as long as it does, so it starts its own
    with simulators(cfg, reuse=False):
        subprocess.run(
            [
                str(Path(sys.executable).with_name("dagster")),
                "dev",
                "-w",
                str(workspace),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            check=False,
        )


@main.command(short_help="serve the dbt docs, Data Docs and the report")
@CONFIG_OPTION
@click.option("--port", type=int, default=None, help="port on 127.0.0.1 (default: $CITYLAKE_DOCS_PORT, else 3080)")
@click.option("--no-serve", is_flag=True, help="build the sites and exit")
def docs(config: str | None, port: int | None, no_serve: bool) -> None:
    """Build the dbt docs and GX Data Docs and serve them, with the report, on 127.0.0.1."""
    cfg = _load(config)
    from orchestration import docs_site

    click.echo("Building the dbt docs (dbt docs generate) ...")
    try:
        folder = docs_site.build(cfg)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Built {folder} (dbt docs, Data Docs index).")
    if no_serve:
        return
    try:
        httpd = docs_site.server(cfg, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port or docs_site.docs_port()}: {exc}") from None
    click.echo(f"Serving http://127.0.0.1:{httpd.server_address[1]}/ (Ctrl-C stops)")
    with httpd, contextlib.suppress(KeyboardInterrupt):
        httpd.serve_forever()


@main.command("publish-open-data", short_help="write the marts as open data (CSV, Parquet, DCAT-AP)")
@CONFIG_OPTION
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="folder to write, or an s3://bucket/prefix to upload to (default: <lake root>/open_data)",
)
def publish_open_data(config: str | None, out: str | None) -> None:
    """Write the published indicators and marts as an open-data package (CSV, Parquet, datapackage.json, DCAT-AP)."""
    cfg = _load(config)
    from orchestration.open_data import publish_open_data as write

    try:
        result = write(cfg, out)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for table, rows in result.tables.items():
        click.echo(f"  {table}: {rows} rows")
    click.echo(f"Wrote {len(result.tables)} datasets to {result.folder} (datapackage.json, catalog.jsonld).")


if __name__ == "__main__":
    main()
