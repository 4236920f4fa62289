"""docs/cities.md's quick start, run exactly as written: its files are written where it says, its
commands run from the repository root (a copy of it), and the query prints what the page shows."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def quick_start() -> tuple[dict[str, str], list[str], str]:
    page = (REPO / "docs" / "cities.md").read_text()
    section = page.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    files = dict(re.findall(r"`(cities/brookfield/[^`]+)`(?:(?!```).)*?:\n\n```\w*\n(.*?)```", section, re.S))
    commands = re.search(r"```sh\n(.*?)```", section, re.S).group(1).strip().splitlines()
    shown = re.search(r"```text\n(.*?)```", section, re.S).group(1)
    return files, commands, shown


def test_the_quick_start_runs_as_written(tmp_path):
    files, commands, shown = quick_start()
    assert sorted(files) == [
        "cities/brookfield/city.yaml",
        "cities/brookfield/districts.geojson",
        "cities/brookfield/drop/crashes.csv",
        "cities/brookfield/population.csv",
    ]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / ".venv").symlink_to(BIN.parent)  # the page's `.venv/bin/citylake`, from the repository root
    env = {k: v for k, v in os.environ.items() if k not in ("CITYLAKE_CONFIG", "DAGSTER_HOME")}
    out = ""
    for command in commands:
        proc = subprocess.run(
            shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        out = proc.stdout
    # as the page shows it (a table's padding at line ends aside)
    assert [line.rstrip() for line in out.splitlines()] == shown.splitlines()
    assert (tmp_path / "cities" / "brookfield" / "lake" / "catalog.duckdb").exists()
