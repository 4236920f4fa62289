"""`make bench SCALE=10`: citylake's pipeline side by side with the plain-SQL floor and pandas.

    python -m benchmarks.run --scale 10 [--days 365] [--repeat 2] [--work DIR] [--keep]

1. Generates the reference city at the scale (and, for the incremental case, the same city one day longer).
2. Runs, alternating, `--repeat` times each:
   (a) citylake's full pipeline through Dagster (`citylake run` on a fresh lake and state),
   (b) the floor: benchmarks/floor.sql in DuckDB over the raw files,
   (c) the same computation in pandas (benchmarks/pandas_path.py),
   each in its own process tree, measuring wall time, CPU time and peak RSS (benchmarks/measure.py),
   and checks that the three agree on every indicator row (relative tolerance 1e-9).
3. Times typical analyst queries on the published catalog (benchmarks/analyst.py).
4. Delivers one new day into the loaded city and runs (a) again: the incremental case.
5. With `--series 30` (make bench's default), runs (a) and (b) once more on the same city generated at
   each further scale: how the cost grows with size.
6. Writes the run into benchmarks/RESULTS.md (between the markers; the analysis around them is kept)
   and ends with one line for scripts:
   a/b=<ratio> c/b=<ratio> incremental=<percent>% peak_rss_mib=<MiB> p95_ms=<ms>
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import duckdb

from benchmarks import analyst, measure, newday

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = Path(__file__).with_name("RESULTS.md")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
COLUMNS = ["indicator_id", "area_id", "period_grain", "period_start", "value", "numerator", "denominator", "coverage"]
TARGETS = {
    "a_over_b": 2.0,
    "a_over_b_cpu": 2.5,
    "incremental_pct": 10.0,
    "peak_rss_mib": 2560.0,
    "peak_rss_mib_series": 6144.0,
    "series_ratio": 3.3,
    "p95_ms": 50.0,
}
#: the test suite's last duration, written by tests/conftest.py at the end of every full `make test`
SUITE_RECORD = REPO / "test-output" / "suite.json"
PATHS = {
    "a": "(a) citylake: Dagster, bronze Delta, dbt, GX gates, publication",
    "b": "(b) floor: one DuckDB SQL script over the raw files",
    "c": "(c) pandas over the raw files",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- setup


def generate(out: Path, scale: float, days: int, start: dt.date, seed: int, logfile: Path) -> dict:
    """Generate the reference city in a subprocess (its memory is not the harness's); a city already
    generated there with the same parameters and not changed since (no new day delivered) is kept."""
    info = out / "generation.json"
    if info.exists() and not (out / newday.MARKER).exists():
        params = json.loads(info.read_text())["parameters"]
        if (params["scale"], params["days"], params["start"], params["seed"]) == (scale, days, start.isoformat(), seed):
            return json.loads(info.read_text())
    code = (
        "import datetime, json, sys; from pathlib import Path; "
        "from orchestration.reference_city import generate; "
        "s = generate(Path(sys.argv[1]), scale=float(sys.argv[2]), days=int(sys.argv[3]), "
        "start=datetime.date.fromisoformat(sys.argv[4]), seed=int(sys.argv[5])); print(json.dumps(s))"
    )
    with open(logfile, "w") as f:
        subprocess.run(
            [sys.executable, "-c", code, str(out), str(scale), str(days), start.isoformat(), str(seed)],
            check=True,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    return json.loads((out / "generation.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_city_config(root: Path, city_dir: Path, collisions_cursor: bool = False) -> Path:
    """The repository's city.yaml pointed at `city_dir`, a lake and state of its own and a free Open311 port
    (the pattern of tests/conftest.py)."""
    from orchestration.reference_city.config import write_config

    def edit(cfg: dict) -> None:
        if collisions_cursor:  # see --collisions-cursor
            cfg["agencies"]["safety"]["collisions"]["cursor"] = "collision_id"

    return write_config(root, city_dir, root / "lake", root / "state", free_port(), edit)


def pipeline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "CITYLAKE_CONFIG")}
    env["DAGSTER_DISABLE_TELEMETRY"] = "true"
    # the reference city hashes 311 emails; a benchmark key when the environment has none
    env.setdefault("CITYLAKE_PII_KEY", "citylake-benchmark-pii-key")
    return env


# ---------------------------------------------------------------------------------------------- paths


def run_a(root: Path, config: Path, label: str, py_spy: str | None = None) -> tuple[measure.Measurement, Path]:
    m = measure.run(
        [str(BIN / "citylake"), "run", "--config", str(config)],
        log=root / f"{label}.log",
        cwd=root,
        env=pipeline_env(),
        profile=root / f"{label}.pyspy.txt" if py_spy else None,
        py_spy=py_spy or "py-spy",
    )
    out = root / f"{label}.parquet"
    if m.returncode == 0:
        export_indicators(root / "lake" / "catalog.duckdb", out)
    return m, out


def export_indicators(catalog: Path, out: Path) -> Path:
    """The published indicators of `catalog` as a Parquet file (what `compare` reads)."""
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        con.execute(f"copy (select {', '.join(COLUMNS)} from indicators order by all) to '{out}' (format parquet)")
    finally:
        con.close()
    return out


def run_script(module: str, city: Path, out: Path, logfile: Path) -> measure.Measurement:
    return measure.run([sys.executable, "-m", module, str(city), str(out)], log=logfile, cwd=REPO)


def failed_lines(work: Path, name: str = "full.log") -> list[str]:
    """The FAILED lines of the `citylake run` logs called `name` under `work`."""
    out = []
    for logfile in sorted(work.glob(f"a*/{name}")):
        out += [
            f"{logfile.relative_to(work)}: {line.strip()}"
            for line in logfile.read_text().splitlines()
            if "FAILED" in line
        ]
    return out


def phases(logfile: Path, wall: float) -> dict[str, float]:
    """Seconds at which each layer's last asset was materialized, from `citylake run`'s progress lines.

    A plain `citylake run` is two Dagster runs (the loads, then the rest), each timing its lines from its
    own start: a later run's times are counted on from the last line of the run before it (the seconds
    between the two runs, the up-to-date check, are not counted, so the stages read slightly early)."""
    last: dict[str, float] = {}
    offset = latest = 0.0
    for line in logfile.read_text().splitlines():
        m = re.match(r"\[\s*([\d.]+)s\] materialized (\w+)/", line)
        if m:
            at = offset + float(m.group(1))
            latest = max(latest, at)
            last[m.group(2)] = max(last.get(m.group(2), 0.0), at)
        elif re.match(r"Run [0-9a-f-]+ (succeeded|FAILED)", line):
            offset = latest
    last["process end (wall)"] = wall
    return last


#: where a sample falls: the first bucket whose marker is on its stack (checked in this order)
BUCKETS = [
    ("bronze ingest: parsing JSON lines (pyarrow, json.loads where it cannot)", ["_jsonl_pieces", "jsonl_records"]),
    ("bronze ingest: per-row key checks in Python (split_keys)", ["split_keys"]),
    ("bronze ingest: Delta writes and merges", ["write_deltalake", "TableMerger", "overwrite_where", "lake.py"]),
    ("bronze ingest: other (reading sources, text_table, metadata)", ["ingest (orchestration/ingest.py"]),
    ("GX gates on bronze (the last load, in DuckDB)", ["bronze_check", "load_gate"]),
    ("GX gates on dbt models (the days rebuilt, in DuckDB)", ["warehouse_check"]),
    ("GX other", ["validate_batches", "great_expectations"]),
    ("dbt build (its subprocess: DuckDB SQL)", ["dbt build"]),
    ("dagster-dbt in the run process", ["dagster_dbt", "dbt/"]),
    ("publication (Delta marts, catalog)", ["publish"]),
]


def profile_summary(path: Path, top: int = 15) -> dict:
    """py-spy's collapsed stacks -> samples per pipeline stage, citylake's own functions (inclusive) and
    the functions at the top of the stack (self)."""
    buckets: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        name = next((b for b, keys in BUCKETS if any(k in stack for k in keys)), "other: Dagster, startup, events")
        buckets[name] = buckets.get(name, 0) + count
        frames = [re.sub(r"^(.*) \((.*?)(:\d+)?\)$", r"\1 (\2)", f) for f in stack.split(";")[1:]]
        frames = [re.sub(r"\(/.*?/(site-packages|work/main)/", "(", f) for f in frames]
        for f in set(frames):
            if "(orchestration/" in f and "cli.py" not in f:
                inclusive[f] = inclusive.get(f, 0) + count
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
    return {
        "samples": total,
        "buckets": sorted(buckets.items(), key=lambda kv: -kv[1]),
        "inclusive": sorted(inclusive.items(), key=lambda kv: -kv[1])[:top],
        "self": sorted(own.items(), key=lambda kv: -kv[1])[:top],
    }


# ---------------------------------------------------------------------------------------------- checks


def compare(left: Path, right: Path, rel: float = 1e-9) -> dict:
    """Rows of the two indicator tables that differ (full outer join on the key), by the tolerance."""
    con = duckdb.connect()
    try:

        def close(c: str) -> str:
            return (
                f"((l.{c} is null and r.{c} is null) or abs(l.{c} - r.{c}) <= {rel} * greatest(abs(l.{c}), abs(r.{c})))"
            )

        key = "indicator_id, area_id, period_grain, period_start"
        diff = con.execute(
            f"""
            select coalesce(l.indicator_id, r.indicator_id), coalesce(l.area_id, r.area_id),
                coalesce(l.period_grain, r.period_grain), cast(coalesce(l.period_start, r.period_start) as varchar),
                l.value, r.value, l.numerator, r.numerator, l.denominator, r.denominator, l.coverage, r.coverage
            from '{left}' as l full join '{right}' as r using ({key})
            where l.indicator_id is null or r.indicator_id is null
                or not ({close("value")} and {close("numerator")} and {close("denominator")} and {close("coverage")})
            order by 1, 2, 3, 4
            """
        ).fetchall()
        rows = con.execute(f"select count(*) from '{left}'").fetchall()[0][0]
        other = con.execute(f"select count(*) from '{right}'").fetchall()[0][0]
        indicators = con.execute(f"select count(distinct indicator_id) from '{left}'").fetchall()[0][0]
    finally:
        con.close()
    return {
        "rows": rows,
        "other_rows": other,
        "indicators": indicators,
        "mismatches": len(diff),
        "examples": [list(map(str, d)) for d in diff[:5]],
    }


# ---------------------------------------------------------------------------------------------- bronze


def bronze_files(lake: Path) -> dict[str, dict[str, int]]:
    """{table: {data file: bytes}} of every bronze Delta table's active files."""
    from deltalake import DeltaTable

    out: dict[str, dict[str, int]] = {}
    for log_dir in sorted((lake / "bronze").glob("*/*/_delta_log")):
        uri = log_dir.parent
        files = DeltaTable(str(uri)).file_uris()
        out[str(uri.relative_to(lake / "bronze"))] = {f: os.path.getsize(f.removeprefix("file://")) for f in files}
    return out


def bronze_io(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Per table: active bytes before/after the run, bytes of files the run added and removed."""
    out = {}
    for t in sorted(set(before) | set(after)):
        b, a = before.get(t, {}), after.get(t, {})
        out[t] = {
            "active_before": sum(b.values()),
            "active_after": sum(a.values()),
            "added": sum(v for f, v in a.items() if f not in b),
            "removed": sum(v for f, v in b.items() if f not in a),
            "files_after": len(a),
        }
    return out


# ---------------------------------------------------------------------------------------------- report


def machine() -> dict:
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = {}
    for pkg in ("dagster", "dbt-duckdb", "deltalake", "duckdb", "great_expectations", "pandas", "pyarrow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "-"
    return {
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "mem_gib": int(mem.split()[1]) / 2**20,
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
    }


def median_of(runs: list[measure.Measurement], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def render(r: dict) -> str:
    p = r["params"]
    mach = r["machine"]
    lines = [
        f"## Run of {r['date']}: scale {p['scale']:g}, {p['days']} days",
        "",
        f"- Command: `{r['command']}` (work dir `{r['work']}`)",
        f"- City: seed {p['seed']}, from {p['start']}; records per source (clean + deliberately bad): "
        + ", ".join(f"{k} {v['clean'] + v['bad']:,}" for k, v in r["generation"]["sources"].items()),
        f"- Machine: {mach['cores']} cores ({mach['affinity']} usable), {mach['mem_gib']:.1f} GiB RAM, {mach['cpu']}, "
        f"Linux {mach['kernel']}, Python {mach['python']}; "
        + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()),
        f"- Load average (1 min) at start / end: {r['load'][0]:.2f} / {r['load'][1]:.2f} (the machine is shared)",
        f"- Each figure is the median of {p['repeat']} alternating runs a, b, c, a, b, c, ...; each path runs in "
        "its own process tree (CPU = user + sys of the tree; peak RSS = the tree's summed RSS, polled every 50 ms).",
        "",
        "| path | wall s | CPU s | peak RSS MiB | wall / floor | CPU / floor | RSS / floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    med = r["median"]
    for k in "abc":
        m = med[k]
        lines.append(
            f"| {PATHS[k]} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | {m['peak_rss_mib']:.0f} | "
            f"{m['wall_s'] / med['b']['wall_s']:.2f} | {m['cpu_s'] / med['b']['cpu_s']:.2f} | "
            f"{m['peak_rss_mib'] / med['b']['peak_rss_mib']:.2f} |"
        )
    lines += [
        "",
        "Individual runs (wall s / CPU s / peak RSS MiB): "
        + "; ".join(
            f"{k}{i + 1} {m['wall_s']:.1f} / {m['cpu_s']:.1f} / {m['peak_rss_mib']:.0f}"
            for i, rep in enumerate(r["runs"])
            for k, m in rep.items()
        ),
        "",
    ]
    agree = r["agreement"]
    if r["a_failures"]:
        lines += ["**(a) FAILED**: `citylake run` exited non-zero; its timings above are of a failed run:", ""]
        lines += [f"    {f}" for f in r["a_failures"][:12]] + [""]
    lines.append(
        "**Agreement** (all indicators x areas x month/year; value, numerator, denominator, coverage; relative "
        f"tolerance 1e-9): {'all three paths agree' if r['agree'] else 'MISMATCH'}: "
        + "; ".join(
            f"{k}: {v['rows']} rows of {v['indicators']} indicators vs {v['other_rows']}, {v['mismatches']} differing"
            for k, v in agree.items()
        )
    )
    for k, v in agree.items():
        for ex in v["examples"]:
            lines.append(f"    - {k}: {ex}")
    lines += [
        "",
        "Where (a)'s wall time went (seconds since the run started at which each layer's last asset "
        "was materialized, from `citylake run`'s progress lines; the rest to the process end is "
        "startup, definitions and teardown):",
        "",
    ]
    lines += ["| stage | done at s | s since the previous stage |", "| --- | ---: | ---: |", *stage_rows(r["phases"])]
    inc = r.get("incremental")
    if inc:
        lines += [
            "",
            f"**Incremental** ({r['params']['days']} days loaded, one new day {inc['day']} delivered: "
            + ", ".join(f"{k} {v:,}" for k, v in inc["added"].items())
            + f"): the new day's run took {inc['m']['wall_s']:.1f} s wall / {inc['m']['cpu_s']:.1f} s CPU / "
            f"{inc['m']['peak_rss_mib']:.0f} MiB peak, **{inc['pct']:.1f} %** of the full rebuild's "
            f"{med['a']['wall_s']:.1f} s. Its indicators agree with the floor run on the updated sources: "
            + (
                "not compared (the run failed)."
                if inc["failures"]
                else f"{'yes' if inc['agree']['mismatches'] == 0 else 'NO'} ({inc['agree']['rows']} rows)."
            ),
            "",
            *(
                ["**The new day's run FAILED** (so its time is not a complete incremental run):", ""]
                + [f"    {f}" for f in inc["failures"][:8]]
                + [""]
                if inc["failures"]
                else []
            ),
            "Bronze during the new day's run (Delta active files, from the table logs before and after):",
            "",
            "| bronze table | active before MiB | active after MiB | written MiB | replaced MiB | files |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        tot = {k: 0 for k in ("active_before", "active_after", "added", "removed")}
        for t, v in inc["bronze"].items():
            for k in tot:
                tot[k] += v[k]
            lines.append(
                f"| {t} | {v['active_before'] / 2**20:.1f} | {v['active_after'] / 2**20:.1f} | "
                f"{v['added'] / 2**20:.2f} | {v['removed'] / 2**20:.2f} | {v['files_after']} |"
            )
        lines.append(
            f"| total | {tot['active_before'] / 2**20:.1f} | {tot['active_after'] / 2**20:.1f} | "
            f"{tot['added'] / 2**20:.2f} | {tot['removed'] / 2**20:.2f} | |"
        )
        lines += [
            "",
            # (measured, not modelled: bronze's own share of it is not separated)
            "The new day's process tree read (read(2), rchar: the new source files, bronze, Python, dbt and the "
            f"warehouse) {inc['m']['rchar_mib']:.0f} MiB, against {med['a']['rchar_mib']:.0f} MiB for the full "
            "rebuild.",
        ]
    for label, prof in r.get("profiles", {}).items():
        what = "the full rebuild" if label == "full" else "the new day's run"
        t = max(prof["samples"], 1)
        lines += [
            "",
            f"py-spy profile of {what} ({prof['samples']} samples at 20 Hz = {prof['samples'] / 20:.0f} s of "
            "busy Python threads, the run process and its dbt subprocess):",
            "",
            "| stage | share of samples | seconds |",
            "| --- | ---: | ---: |",
            *(f"| {b} | {100 * n / t:.1f} % | {n / 20:.0f} |" for b, n in prof["buckets"]),
            "",
            "| citylake function (inclusive) | share | function at the top of the stack (self) | share |",
            "| --- | ---: | --- | ---: |",
            *(
                f"| `{fi}` | {100 * ni / t:.1f} % | `{fs}` | {100 * ns / t:.1f} % |"
                for (fi, ni), (fs, ns) in zip(prof["inclusive"], prof["self"], strict=False)
            ),
        ]
    q = r["analyst"]
    lines += [
        "",
        f"**Analyst queries** on the published catalog (`duckdb.connect(catalog, read_only=True)`, opened in "
        f"{q['open']['ms']:.1f} ms; {p['query_runs']} measured runs each after 3 warm-ups):",
        "",
        "| query | p50 ms | p95 ms | max ms | rows |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, v in q.items():
        if name != "open":
            lines.append(f"| {name} | {v['p50_ms']:.2f} | {v['p95_ms']:.2f} | {v['max_ms']:.2f} | {v['rows']} |")
    series = r.get("series") or []
    if series:
        lines += [
            "",
            f"**How cost grows with size** ((a) and (b) once each on the same city generated at each scale, "
            f"{p['days']} days; ratios against scale {p['scale']:g} above):",
            "",
            "| scale | sensor readings | (a) wall s | (a) CPU s | (a) peak RSS MiB | (b) wall s | (b) CPU s | "
            "(a) / (a) at base | (b) / (b) at base | (a) / (b) | agree |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for pt in series:
            a, b = pt["a"], pt["b"]
            lines.append(
                f"| {pt['scale']:g} | {pt['readings']:,} | {a['wall_s']:.1f} | {a['cpu_s']:.1f} | "
                f"{a['peak_rss_mib']:.0f} | {b['wall_s']:.1f} | {b['cpu_s']:.1f} | {pt['a_over_base']:.2f} | "
                f"{pt['b_over_base']:.2f} | {a['wall_s'] / b['wall_s']:.2f} | "
                f"{'yes' if pt['agree'] else 'NO'} |"
            )
        for pt in series:
            if pt["phases"]:
                lines += [
                    "",
                    f"Stages of (a) at scale {pt['scale']:g}:",
                    "",
                    "| stage | done at s | s since the previous stage |",
                    "| --- | ---: | ---: |",
                    *stage_rows(pt["phases"]),
                ]
            lines += [f"    {f}" for f in pt["failures"][:8]]
    suite = r.get("suite")
    lines += [
        "",
        "**The test suite** (`make test`, recorded by tests/conftest.py at the end of the last full run on this "
        "checkout): "
        + (
            f"{suite['wall_s'] / 60:.1f} min wall with {suite['workers']} worker(s), {suite['passed']} passed, "
            f"{suite['failed']} failed, {suite['skipped']} skipped, finished {suite['finished']}."
            if suite
            else "no record (run `make test` first)."
        ),
    ]
    s = r["summary"]
    lines += [
        "",
        "**Targets** (scale 10, 2 cores):",
        "",
        "| target | measured | met |",
        "| --- | ---: | --- |",
        f"| a/b (wall) at most {TARGETS['a_over_b']:g} | {s['a_over_b']:.2f} | "
        f"{'yes' if s['a_over_b'] <= TARGETS['a_over_b'] else 'NO'} |",
        f"| a/b (CPU) at most {TARGETS['a_over_b_cpu']:g} | {s['a_over_b_cpu']:.2f} | "
        f"{'yes' if s['a_over_b_cpu'] <= TARGETS['a_over_b_cpu'] else 'NO'} |",
        f"| new day at most {TARGETS['incremental_pct']:g} % of the full rebuild | {incremental_cell(s, inc)} |",
        *(
            f"| scale {pt['scale']:g}: time / time at scale {p['scale']:g} at most {TARGETS['series_ratio']:g}; "
            f"peak memory under {TARGETS['peak_rss_mib_series'] / 1024:g} GiB | {pt['a_over_base']:.2f}; "
            f"{pt['a']['peak_rss_mib']:.0f} MiB | "
            f"{'yes' if series_met(pt) else 'NO'} |"
            for pt in series
        ),
        f"| pipeline peak memory under {TARGETS['peak_rss_mib'] / 1024:g} GiB | {s['peak_rss_mib']:.0f} MiB | "
        f"{'yes' if s['peak_rss_mib'] < TARGETS['peak_rss_mib'] else 'NO'} |",
        f"| analyst queries p95 under 50 ms | {s['p95_ms']:.2f} ms | "
        f"{'yes' if s['p95_ms'] < TARGETS['p95_ms'] else 'NO'} |",
        "",
        "```",
        r["summary_line"],
        "```",
    ]
    return "\n".join(lines) + "\n"


def incremental_cell(s: dict, inc: dict | None) -> str:
    if inc and inc["failures"]:
        return "the run failed | NO"
    if s["incremental_pct"] is None:
        return "not run | -"
    return f"{s['incremental_pct']:.1f} % | {'yes' if s['incremental_pct'] <= TARGETS['incremental_pct'] else 'NO'}"


def write_results(path: Path, text: str) -> None:
    """Put the run between the markers of `path`, keeping what is written around them."""
    block = f"{START}\n{text}{END}"
    old = path.read_text() if path.exists() else ""
    if START in old and END in old:
        new = old[: old.index(START)] + block + old[old.index(END) + len(END) :]
    else:
        new = "# Benchmark results\n\nWritten by `make bench`; see docs/benchmark.md.\n\n" + block + "\n"
    path.write_text(new)


def scale_point(work: Path, scale: float, args: argparse.Namespace, base: dict, spy: str | None) -> dict:
    """(a) and (b) once on the city generated at `scale` (same days, start and seed): one point of the series."""
    city = work / f"city_s{scale:g}"
    log(f"series: generating the reference city at scale {scale:g}")
    gen = generate(city, scale, args.days, args.start, args.seed, work / f"generate_s{scale:g}.log")
    root = work / f"a_s{scale:g}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    log(f"series: scale {scale:g} (a) citylake run")
    a, a_out = run_a(root, write_city_config(root, city, args.collisions_cursor), "full", spy)
    log(f"  (a) {a.wall_s:.1f} s wall, {a.cpu_s:.1f} s CPU, {a.peak_rss_mib:.0f} MiB")
    b_out = work / f"b_s{scale:g}.parquet"
    b = run_script("benchmarks.floor", city, b_out, work / f"b_s{scale:g}.log")
    log(f"  (b) {b.wall_s:.1f} s wall, {b.cpu_s:.1f} s CPU, {b.peak_rss_mib:.0f} MiB")
    ok = a.returncode == 0 and b.returncode == 0
    agreement = compare(a_out, b_out) if ok else {"rows": 0, "other_rows": 0, "mismatches": -1}
    point = {
        "scale": scale,
        "readings": sum(v["clean"] + v["bad"] for k, v in gen["summary"]["sources"].items() if "air" in k),
        "a": a.as_dict(),
        "b": b.as_dict(),
        "a_over_base": a.wall_s / base["a"]["wall_s"],
        "b_over_base": b.wall_s / base["b"]["wall_s"],
        "phases": phases(root / "full.log", a.wall_s) if a.returncode == 0 else {},
        "agree": ok and agreement["mismatches"] == 0 and agreement["rows"] == agreement["other_rows"],
        "agreement": agreement,
        "failures": [ln.strip() for ln in (root / "full.log").read_text().splitlines() if "FAILED" in ln],
    }
    if not args.keep and args.work is None:
        shutil.rmtree(root, ignore_errors=True)
    return point


def series_met(pt: dict) -> bool:
    return pt["a_over_base"] <= TARGETS["series_ratio"] and pt["a"]["peak_rss_mib"] < TARGETS["peak_rss_mib_series"]


def stage_rows(phases_: dict[str, float]) -> list[str]:
    """The layers in the order they finished, each with the seconds since the previous one finished."""
    rows, prev = [], 0.0
    for stage, end in sorted(phases_.items(), key=lambda kv: kv[1]):
        rows.append(f"| {stage} | {end:.1f} | {max(end - prev, 0.0):.1f} |")
        prev = max(prev, end)
    return rows


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=10)
    ap.add_argument("--days", type=int, default=365, help="days of history (365: a year, ~10M readings at scale 10)")
    ap.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2025, 1, 1))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--repeat", type=int, default=None, help="alternating runs of each path, median reported (default: 3, 1 at 5+)"
    )
    ap.add_argument("--query-runs", type=int, default=60)
    ap.add_argument("--no-incremental", action="store_true")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder (cities, lakes, logs)")
    ap.add_argument("--profile", action="store_true", help="sample the last full (a) run and the new day with py-spy")
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or str(BIN / "py-spy"), help="the py-spy binary")
    ap.add_argument(
        "--collisions-cursor",
        action="store_true",
        help="workaround: read safety/collisions incrementally by collision_id instead of as a full snapshot "
        "(a rerun of a snapshot source fails its bronze load gate; see RESULTS.md)",
    )
    ap.add_argument(
        "--series",
        type=float,
        nargs="*",
        default=[],
        help="further scales at which (a) and (b) run once each (how cost grows with size), e.g. --series 30",
    )
    ap.add_argument("--results", type=Path, default=RESULTS, help="the Markdown file to write the run into")
    args = ap.parse_args()
    if args.repeat is None:
        args.repeat = 1 if args.scale >= 5 else 3

    spy = args.py_spy if args.profile else None
    if spy and not Path(spy).exists():
        log(f"--profile: no py-spy at {spy} (pip install py-spy, or --py-spy PATH); profiling skipped")
        spy = None
    work = args.work or Path(tempfile.mkdtemp(prefix=f"citylake-bench-s{args.scale:g}-"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    load0 = os.getloadavg()[0]
    log(f"working in {work}")
    city = work / "city"
    log(f"generating the reference city: scale {args.scale:g}, {args.days} days")
    gen = generate(city, args.scale, args.days, args.start, args.seed, work / "generate.log")
    longer = work / "city_longer"
    if not args.no_incremental:
        log(f"generating the same city {args.days + 1} days long, for the new day")
        generate(longer, args.scale, args.days + 1, args.start, args.seed, work / "generate_longer.log")

    runs: list[dict[str, measure.Measurement]] = []
    agreement: dict[str, dict] = {}
    a_root = None
    for i in range(args.repeat):
        rep: dict[str, measure.Measurement] = {}
        if a_root is not None:  # one lake at a time on disk; the logs stay
            shutil.rmtree(a_root / "lake", ignore_errors=True)
            shutil.rmtree(a_root / "state", ignore_errors=True)
        a_root = work / f"a{i + 1}"
        a_root.mkdir()
        config = write_city_config(a_root, city, args.collisions_cursor)
        log(f"run {i + 1}/{args.repeat}: (a) citylake run")
        rep["a"], a_out = run_a(a_root, config, "full", spy if i == args.repeat - 1 else None)
        if rep["a"].returncode != 0:
            log(f"(a) FAILED (exit {rep['a'].returncode}); see {a_root / 'full.log'}")
        log(f"  (a) {rep['a'].wall_s:.1f} s wall, {rep['a'].cpu_s:.1f} s CPU, {rep['a'].peak_rss_mib:.0f} MiB")
        b_out, c_out = work / f"b{i + 1}.parquet", work / f"c{i + 1}.parquet"
        log(f"run {i + 1}/{args.repeat}: (b) floor.sql")
        rep["b"] = run_script("benchmarks.floor", city, b_out, work / f"b{i + 1}.log")
        log(f"  (b) {rep['b'].wall_s:.1f} s wall, {rep['b'].cpu_s:.1f} s CPU, {rep['b'].peak_rss_mib:.0f} MiB")
        log(f"run {i + 1}/{args.repeat}: (c) pandas")
        rep["c"] = run_script("benchmarks.pandas_path", city, c_out, work / f"c{i + 1}.log")
        log(f"  (c) {rep['c'].wall_s:.1f} s wall, {rep['c'].cpu_s:.1f} s CPU, {rep['c'].peak_rss_mib:.0f} MiB")
        for k, m in rep.items():
            if m.returncode != 0 and k != "a":
                raise SystemExit(f"({k}) failed with exit {m.returncode}; see its log in {work}")
        if rep["a"].returncode == 0:
            agreement[f"a vs b (run {i + 1})"] = compare(a_out, b_out)
        agreement[f"c vs b (run {i + 1})"] = compare(c_out, b_out)
        runs.append(rep)
    med = {
        k: {f: median_of([r[k] for r in runs], f) for f in ("wall_s", "cpu_s", "peak_rss_mib", "rchar_mib")}
        for k in "abc"
    }
    a_ok = all(r["a"].returncode == 0 for r in runs)
    failures = [] if a_ok else failed_lines(work)

    log("analyst queries")
    catalog = a_root / "lake" / "catalog.duckdb"
    queries = analyst.bench(catalog, runs=args.query_runs) if a_ok else {"open": {"ms": float("nan")}}

    inc = None
    if not args.no_incremental and a_ok:
        day = args.start + dt.timedelta(days=args.days)
        log(f"incremental: delivering {day} and running (a) again")
        before = bronze_files(a_root / "lake")
        added = newday.add_day(city, longer, day)
        m, inc_out = run_a(a_root, a_root / "city.yaml", "newday", spy)
        after = bronze_files(a_root / "lake")
        floor_out = work / "b_newday.parquet"
        run_script("benchmarks.floor", city, floor_out, work / "b_newday.log")
        io = bronze_io(before, after)
        inc = {
            "day": day.isoformat(),
            "added": added,
            "m": m.as_dict(),
            "pct": 100 * m.wall_s / med["a"]["wall_s"],
            "bronze": io,
            "agree": compare(inc_out, floor_out) if m.returncode == 0 else {"rows": 0, "mismatches": -1},
            # a failed run counts as failed even when its log names no failed asset (an import error)
            "failures": [] if m.returncode == 0 else failed_lines(work, "newday.log") or [f"exit {m.returncode}"],
        }
        log(f"  new day: {m.wall_s:.1f} s wall ({inc['pct']:.1f} % of the full rebuild)")

    series = [scale_point(work, scale, args, med, spy=None) for scale in args.series if scale != args.scale]
    agree = all(v["mismatches"] == 0 and v["rows"] == v["other_rows"] for v in agreement.values()) and a_ok
    agree = agree and all(pt["agree"] for pt in series)
    worst_p95 = max((v["p95_ms"] for k, v in queries.items() if k != "open"), default=float("nan"))
    summary = {
        "a_over_b": med["a"]["wall_s"] / med["b"]["wall_s"],
        "c_over_b": med["c"]["wall_s"] / med["b"]["wall_s"],
        "incremental_pct": inc["pct"] if inc and not inc["failures"] else None,
        "peak_rss_mib": med["a"]["peak_rss_mib"],
        "a_over_b_cpu": med["a"]["cpu_s"] / med["b"]["cpu_s"],
        "p95_ms": worst_p95,
    }
    line = (
        f"a/b={summary['a_over_b']:.2f} c/b={summary['c_over_b']:.2f} "
        f"incremental={summary['incremental_pct'] if summary['incremental_pct'] is not None else float('nan'):.1f}% "
        f"peak_rss_mib={summary['peak_rss_mib']:.0f} p95_ms={summary['p95_ms']:.2f}"
    )
    report = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "work": str(work),
        "params": {
            "scale": args.scale,
            "days": args.days,
            "start": args.start.isoformat(),
            "seed": args.seed,
            "repeat": args.repeat,
            "query_runs": args.query_runs,
        },
        "generation": gen["summary"],
        "machine": machine(),
        "load": (load0, os.getloadavg()[0]),
        "runs": [{k: m.as_dict() for k, m in rep.items()} for rep in runs],
        "median": med,
        "agreement": agreement,
        "agree": agree,
        "a_failures": failures,
        "phases": phases(a_root / "full.log", runs[-1]["a"].wall_s) if a_ok else {},
        "incremental": inc,
        "analyst": queries,
        "profiles": {
            label: profile_summary(a_root / f"{label}.pyspy.txt")
            for label in ("full", "newday")
            if spy and (a_root / f"{label}.pyspy.txt").exists()
        },
        "series": series,
        "suite": json.loads(SUITE_RECORD.read_text()) if SUITE_RECORD.exists() else None,
        "summary": summary,
        "summary_line": line,
    }
    (work / "results.json").write_text(json.dumps(report, indent=1, default=str))
    write_results(args.results, render(report))
    log(f"results written to {args.results} (raw: {work / 'results.json'})")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if not agree:
        log("the three paths DO NOT agree on every indicator; see RESULTS.md")
    print(line, flush=True)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
