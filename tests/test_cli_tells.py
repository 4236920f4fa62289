"""A CLI that tells: the summary `citylake run` ends with, `citylake status`, `citylake quarantine`,
progress inside long work, help that reads well and no traceback for a normal event. Figures are
compared with the lake and the published catalog read independently."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

import duckdb
import pytest
import yaml
from deltalake import DeltaTable

from orchestration.config import load_config
from tests.conftest import BIN, REPO, CityRun, citylake, write_city_config

_AGENCIES = yaml.safe_load((REPO / "cities" / "riverton" / "city.yaml").read_text())["agencies"]
SOURCES = [f"{agency}/{source}" for agency, sources in _AGENCIES.items() for source in sources]


def catalog_rows(run: CityRun, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(run.catalog), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def bronze_rows(run: CityRun, source: str) -> int:
    return DeltaTable(str(run.lake / "bronze" / source)).to_pyarrow_table().num_rows


def table_after(text: str, header: str) -> dict[str, list[str]]:
    """The rows of a printed table under the line starting with `header`, keyed by their first word."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(header))
    rows = {}
    for line in lines[start + 1 :]:
        words = line.split()
        if not words or words[0] not in SOURCES:
            break
        rows[words[0]] = words[1:]
    return rows


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_run_ends_with_a_summary_of_rows_gates_indicators_and_where_to_look(city_run: CityRun) -> None:
    out = city_run.output
    assert "\nSummary\n" in out, out[-3000:]
    summary = out[out.index("\nSummary\n") :]
    loads = table_after(summary, "source")
    assert sorted(loads) == sorted(SOURCES)
    held = dict(
        catalog_rows(
            city_run,
            "select agency || '/' || source_name, count(*) from quarantine where layer = 'bronze' group by 1",
        )
    )
    for source, (read, new, quarantined, in_bronze) in loads.items():
        # the first run of a fresh lake: everything read is new or held back
        assert number(in_bronze) == bronze_rows(city_run, source) > 0, source
        assert number(quarantined) == held.get(source, 0), source
        assert number(read) >= number(new) + number(quarantined) > 0, source
    gates = re.search(r"Gates: (\d+) of (\d+) passed", summary)
    assert gates and gates.group(1) == gates.group(2) and int(gates.group(2)) > 10, summary
    ((indicator_rows, indicators),) = catalog_rows(
        city_run, "select count(*), count(distinct indicator_id) from indicators"
    )
    assert f"Indicators: {indicator_rows:,} new, 0 changed, 0 removed rows in {indicators} indicators" in summary
    ((quarantined,),) = catalog_rows(city_run, "select count(*) from quarantine")
    assert f"Quarantined records in the catalog: {quarantined:,}" in summary
    assert f"Report:  {city_run.lake / 'indicator_report.html'}" in summary
    assert f"Catalog: {city_run.catalog}" in summary


def test_dbt_steps_say_model_n_of_total(city_run: CityRun) -> None:
    steps = [
        (n, t, key) for key, n, t in re.findall(r"materialized (\S+) \(dbt model (\d+) of (\d+)\)", city_run.output)
    ]
    assert steps, city_run.output[-2000:]
    totals = {int(t) for _, t, _ in steps}
    # every count reaches its total, and each model is named once per step
    for total in totals:
        assert {int(n) for n, t, _ in steps if int(t) == total} == set(range(1, total + 1))
    assert "marts/indicators" in {key for _, _, key in steps}


def test_a_long_load_reports_rows_and_rows_per_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestration import ingest
    from orchestration.reference_city import generate

    generate(tmp_path / "riverton", scale=0.2, days=20, start=dt.date(2025, 3, 1), seed=7)
    config = write_city_config(tmp_path, tmp_path / "riverton", tmp_path / "lake", partitioned=False)
    monkeypatch.setattr(ingest, "PROGRESS_EVERY_S", 0.0)  # every piece counts as long
    monkeypatch.setenv("CITYLAKE_CONFIG", str(config))
    cfg = load_config(str(config))
    source = next(s for s in cfg.sources if s.key == "environment/air_vendor_a")
    lines: list[str] = []
    result = ingest.ingest(cfg, source, "progress-test", log=lines.append)
    found = [re.search(r"^environment/air_vendor_a: ([\d,]+) rows read so far \(([\d,]+) rows/s\)$", m) for m in lines]
    counts = [number(m.group(1)) for m in found if m]
    assert counts, lines
    assert counts == sorted(counts) and 0 < counts[-1] <= result.rows_read
    assert all(number(m.group(2)) > 0 for m in found if m)


def test_status_after_a_run_shows_each_source_with_its_rows_freshness_and_gate(city_run: CityRun) -> None:
    proc = citylake("status", config=city_run.config, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = table_after(proc.stdout, "source")
    assert sorted(rows) == sorted(SOURCES)
    for source, words in rows.items():
        line = " ".join(words)
        # date, time, rows, quarantined, then freshness and gate
        assert number(words[2]) == bronze_rows(city_run, source), line
        # every reference source has a schedule: the run just now is on it
        assert "(on schedule); gate passed" in line, line
    assert re.search(r"Gates after bronze: (\d+) of \1 passed", proc.stdout), proc.stdout
    assert "Catalog published " in proc.stdout and str(city_run.catalog) in proc.stdout


def test_status_says_which_source_missed_its_schedule(city_run: CityRun, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestration.status import format_status, source_states

    monkeypatch.setenv("DAGSTER_HOME", str(city_run.state / "dagster"))
    cfg = load_config(str(city_run.config))
    last = max(s.loaded_at for s in source_states(cfg))
    text, well = format_status(cfg, now=last + dt.timedelta(hours=3))
    assert not well
    hourly = [s for s in cfg.sources if s.schedule and s.schedule.split()[1] == "*"]
    assert hourly
    for source in hourly:  # hourly or more often: at least two ticks missed
        line = next(x for x in text.splitlines() if x.startswith(source.key + " "))
        assert "(LATE: the scheduled load of " in line, line


def test_status_and_quarantine_on_a_city_never_run_say_so(tmp_path: Path) -> None:
    from orchestration.reference_city import generate

    generate(tmp_path / "riverton", scale=0.1, days=5, start=dt.date(2025, 3, 1), seed=3)
    config = write_city_config(tmp_path, tmp_path / "riverton", tmp_path / "lake")
    proc = citylake("status", config=config, check=False)
    assert proc.returncode == 1
    assert "Nothing loaded yet" in proc.stdout and "citylake run" in proc.stdout
    assert "Traceback" not in proc.stderr
    proc = citylake("quarantine", config=config, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"no published catalog at {tmp_path / 'lake' / 'catalog.duckdb'}" in proc.stderr


def test_quarantine_counts_by_source_and_reason_equal_the_published_table(city_run: CityRun) -> None:
    ((total,),) = catalog_rows(city_run, "select count(*) from quarantine")
    proc = citylake("quarantine", config=city_run.config)
    assert proc.stdout.startswith(f"{total:,} records held back, published in {city_run.catalog}")
    listed = sum(number(line.split()[0]) for line in proc.stdout.splitlines()[2:] if line.strip())
    assert listed == total > 0

    # the source with most held-back records, and a word of its most frequent reason
    source, reason, n = catalog_rows(
        city_run,
        """select agency || '/' || source_name, reason, count(*) from quarantine
           group by all order by 3 desc limit 1""",
    )[0]
    word = max(re.findall(r"[a-z_]{5,}", reason.lower()), key=len)
    ((by_source,),) = catalog_rows(
        city_run, "select count(*) from quarantine where agency || '/' || source_name = ?", [source]
    )
    ((by_both,),) = catalog_rows(
        city_run,
        "select count(*) from quarantine where agency || '/' || source_name = ? and contains(lower(reason), ?)",
        [source, word],
    )
    assert by_source >= by_both >= n
    proc = citylake("quarantine", "--source", source, config=city_run.config)
    assert proc.stdout.startswith(f"{by_source:,} records held back (source {source})")
    proc = citylake("quarantine", "--source", source, "--reason", word.upper(), "--rows", "3", config=city_run.config)
    assert proc.stdout.startswith(f"{by_both:,} records held back (source {source} and reason containing ")
    samples = [line for line in proc.stdout.splitlines() if line.startswith(("bronze ", "conformed "))]
    assert len(samples) == min(3, by_both)
    assert all(f" {source} " in line and word in line.lower() for line in samples), samples

    proc = citylake("quarantine", "--source", "nope/nothing", config=city_run.config, check=False)
    assert proc.returncode != 0 and "not a source of" in proc.stderr and "transport/ridership" in proc.stderr


def test_help_lists_one_command_a_line_with_what_it_does() -> None:
    from orchestration.cli import main

    out = subprocess.run(
        [str(BIN / "citylake"), "--help"], capture_output=True, text=True, check=True, env={"COLUMNS": "80"}
    ).stdout
    commands = out[out.index("Commands:\n") + len("Commands:\n") :].splitlines()
    listed = {}
    for line in commands:
        name, _, what = line.strip().partition(" ")
        listed[name] = what.strip()
    assert set(listed) == set(main.commands), out
    assert list(listed)[:4] == ["demo", "generate", "check", "run"]
    for name, what in listed.items():
        assert what and not what.endswith("..."), f"{name}: {what!r}"
        assert len(f"  {name}  {what}") <= 80


def test_check_piped_into_head_prints_no_traceback(city_run: CityRun) -> None:
    proc = subprocess.run(
        ["bash", "-c", f"'{BIN / 'citylake'}' check --config '{city_run.config}' | head -1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.stdout == f"{city_run.config}: valid ({len(SOURCES)} sources, lake {city_run.lake})\n"
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


def test_a_source_whose_secret_is_not_set_fails_at_once_naming_the_variable(tmp_path: Path) -> None:
    """A ${VAR} not set is a config error: the load fails without Dagster's retries (two, with backoff, for
    an agency system's transient failures), saying which key and which variable, and the other loads land."""
    from tests.connectors_support import city_yaml

    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_text("id,v\n1,2\n")
    variable = "CITYLAKE_TEST_NEVER_SET_DSN"
    config = city_yaml(
        tmp_path / "city",
        {
            "police": {"crashes": {"kind": "postgres", "dsn": f"${{{variable}}}", "table": "t", "primary_key": ["id"]}},
            "parks": {"counts": {"kind": "files", "path": str(drop / "*.csv"), "format": "csv", "primary_key": ["id"]}},
        },
    )
    run = citylake("run", config=config, check=False, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert f"agencies.police.crashes.dsn: environment variable {variable} is not set" in out, out
    assert "up for retry" not in out, out
    assert re.search(r"parks/counts\s+1\s+1\s+0\s+1", out), out
