"""Riverton's city folder (cities/riverton/: its city.yaml and its own bronze suites), copied for a city
generated elsewhere: what the tests and the benchmark run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

FOLDER = Path(__file__).resolve().parents[2] / "cities" / "riverton"


def write_config(root: Path, city_dir: Path, lake: Path, state: Path, port: int, edit: Any = None) -> Path:
    """Riverton's city.yaml in `root`, pointed at the generated city in `city_dir`, a lake and state of
    its own and the Open311 simulator on `port`; its bronze suites beside it (root/expectations).
    `edit(cfg)` may change the parsed config before it is written."""
    text = (FOLDER / "city.yaml").read_text().replace("./reference_city", str(city_dir))
    cfg = yaml.safe_load(text)
    cfg["lake"]["root"] = str(lake)
    cfg["state_dir"] = str(state)
    cfg["simulators"]["open311"]["port"] = port
    cfg["agencies"]["service_requests"]["requests"]["url"] = f"http://127.0.0.1:{port}/open311/v2/requests.json"
    if edit is not None:
        edit(cfg)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(FOLDER / "expectations", root / "expectations", dirs_exist_ok=True)
    path = root / "city.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
