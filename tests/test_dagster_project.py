"""The UI as a well-kept Dagster project: a file sensor requests a run only for new files, assets carry
owners and domain tags, dbt assets are described by their property files, not their SQL.

Everything runs in a subprocess against the test city's config (the code location reads
$CITYLAKE_CONFIG once per process), on a real (temporary) Dagster instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import CityRun

SCRIPT = r"""
import json, shutil, sys
from pathlib import Path
import dagster as dg
from orchestration.definitions import defs
from orchestration.city import city

source = city().source("energy/meter_readings")
sensor = next(s for s in defs.sensors if s.name == "bronze_energy__meter_readings_arrivals")
out = {}

def evaluate(instance, cursor):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    result = sensor.evaluate_tick(ctx)
    return result, [sorted(k.to_user_string() for k in r.asset_selection or []) for r in result.run_requests]

with dg.instance_for_test() as instance:
    # first tick, no cursor, every file already loaded by `citylake run`
    first, out["first_tick"] = evaluate(instance, None)
    out["first_skip"] = first.skip_message
    # second tick with that cursor: nothing changed
    second, out["second_tick"] = evaluate(instance, first.cursor)
    # a new file arrives
    folder = Path(source.local_path()).parent
    existing = sorted(folder.glob("*.csv"))
    new = folder / "zz_sensor_test_new.csv"
    shutil.copyfile(existing[0], new)
    new.write_text(new.read_text() + "\n")  # other content than any loaded file
    try:
        third, out["after_new_file"] = evaluate(instance, second.cursor)
        out["new_files_tag"] = [r.tags.get("citylake/new_files") for r in third.run_requests]
        fourth, out["same_file_again"] = evaluate(instance, third.cursor)
    finally:
        new.unlink()

graph = defs.resolve_asset_graph()
specs = {}
for key in graph.get_all_asset_keys():
    node = graph.get(key)
    specs[key.to_user_string()] = {
        "owners": list(node.owners), "tags": dict(node.tags), "description": node.description or "",
    }
out["specs"] = specs
print(json.dumps(out))
"""

OWNERS = {"environment": "team:environment", "energy": "energy-data@riverton.example"}


@pytest.fixture(scope="module")
def project(city_run: CityRun, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The test city with `owner:` on two agencies' sources; the script's findings."""
    cfg = yaml.safe_load(city_run.config.read_text())
    for agency, owner in OWNERS.items():
        for source in cfg["agencies"][agency].values():
            source["owner"] = owner
    config = city_run.config.with_name("city.owners.yaml")
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "CITYLAKE_CONFIG": str(config)}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=city_run.root,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_file_sensor_requests_runs_only_for_new_files(project: dict) -> None:
    # the first tick after `citylake run` finds every file already in bronze: no run, a reason
    assert project["first_tick"] == []
    assert project["first_skip"] == "no new files for energy/meter_readings"
    assert project["second_tick"] == []
    # a new file: one run of its bronze asset, then nothing again for the same file
    assert project["after_new_file"] == [["bronze/energy/meter_readings"]]
    assert project["new_files_tag"] == ["1"]
    assert project["same_file_again"] == []


def test_assets_have_owners_and_domain_tags(project: dict) -> None:
    specs = project["specs"]
    assert specs["bronze/energy/meter_readings"]["owners"] == [OWNERS["energy"]]
    air_bronze = [k for k in specs if k.startswith("bronze/environment/")]
    assert air_bronze and all(specs[k]["owners"] == [OWNERS["environment"]] for k in air_bronze)
    assert all(specs[k]["tags"]["domain"] == "air" for k in air_bronze)
    assert specs["bronze/energy/meter_readings"]["tags"]["domain"] == "energy"
    # dbt models: the domain from the model's name, the owners of the sources feeding that domain
    assert specs["marts/mart_air_quality"]["tags"]["domain"] == "air"
    assert specs["marts/mart_air_quality"]["owners"] == [OWNERS["environment"]]
    assert specs["conformed/fct_energy_consumption"]["owners"] == [OWNERS["energy"]]
    assert specs["marts/mart_waste"]["tags"]["domain"] == "waste" and specs["marts/mart_waste"]["owners"] == []
    assert specs["marts/indicators"]["tags"]["domain"] == "shared"
    assert sorted(specs["marts/indicators"]["owners"]) == sorted(OWNERS.values())
    # every asset has a domain tag
    missing = sorted(k for k, s in specs.items() if "domain" not in s["tags"] and not k.startswith("published/"))
    assert not missing, missing


def test_dbt_descriptions_hold_no_sql(project: dict) -> None:
    layers = ("intermediate", "conformed", "marts")
    dbt_assets = {k: s for k, s in project["specs"].items() if k.split("/")[0] in layers}
    assert len(dbt_assets) >= 30
    with_sql = sorted(k for k, s in dbt_assets.items() if "select" in s["description"].lower())
    assert not with_sql, f"descriptions with SQL: {with_sql}"
    assert project["specs"]["marts/indicators"]["description"].startswith("ISO 37120-style indicators, long format")


def test_owner_must_be_an_email_or_a_team(city_run: CityRun, tmp_path: Path) -> None:
    from orchestration.config import ConfigError, load_config

    cfg = yaml.safe_load(city_run.config.read_text())
    cfg["agencies"]["energy"]["meter_readings"]["owner"] = "the energy people"
    bad = city_run.config.with_name("city.bad_owner.yaml")
    bad.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ConfigError, match=r"agencies\.energy\.meter_readings\.owner.*email address or team:"):
        load_config(bad)
