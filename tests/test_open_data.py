"""`citylake publish-open-data`: the published indicators and marts as CSV and Parquet with a Frictionless
datapackage.json that frictionless validates with zero errors, and a DCAT-AP (JSON-LD) dataset per table."""

from __future__ import annotations

import json

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import CityRun, citylake

DCAT = "http://www.w3.org/ns/dcat#"
DCT = "http://purl.org/dc/terms/"


@pytest.fixture(scope="module")
def package(city_run: CityRun, tmp_path_factory: pytest.TempPathFactory):
    """The package of the test city (with `open_data:` set in its city.yaml), written twice to one folder."""
    cfg = yaml.safe_load(city_run.config.read_text())
    cfg["open_data"] = {
        "publisher": "City of Riverton, Office of Data",
        "license": "CC-BY-4.0",
        "base_url": "https://data.riverton.example/citylake/",
        "contact": "opendata@riverton.example",
    }
    config = city_run.config.with_name("city.open_data.yaml")
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path_factory.mktemp("open_data")
    citylake("publish-open-data", "--out", str(out), config=config)
    proc = citylake("publish-open-data", "--out", str(out), config=config)  # a rerun replaces, never adds
    assert "datasets to" in proc.stdout
    with duckdb.connect(str(city_run.catalog), read_only=True) as con:
        versions = con.execute("select value from _published where key = 'delta_versions'").fetchone()[0]
        marts = sorted(json.loads(versions))
        counts = {t: con.execute(f'select count(*) from "{t}"').fetchone()[0] for t in marts}
    return out, counts


def test_frictionless_validates_the_package(package) -> None:
    from frictionless import Package

    out, counts = package
    report = Package(str(out / "datapackage.json")).validate()
    errors = [e.message for task in report.tasks for e in task.errors] + [e.message for e in report.errors]
    assert report.valid and not errors, errors[:10]
    assert {t.name.replace("-", "_") for t in report.tasks} == set(counts)
    # frictionless read every row of every CSV, as many as the catalog's table has
    assert {t.name.replace("-", "_"): t.stats["rows"] for t in report.tasks} == counts
    assert "indicators" in counts and any(t.startswith("mart_") for t in counts)
    assert not list(out.rglob("*.tmp")) and sorted(p.name for p in out.iterdir()) == [
        "catalog.jsonld",
        "data",
        "datapackage.json",
    ]


def test_parquet_and_csv_hold_the_catalogs_rows(package) -> None:
    out, counts = package
    for table, rows in counts.items():
        assert pq.read_metadata(out / "data" / f"{table}.parquet").num_rows == rows
        with open(out / "data" / f"{table}.csv", encoding="utf-8") as f:
            assert sum(1 for _ in f) == rows + 1  # the header
    descriptor = json.loads((out / "datapackage.json").read_text())
    indicators = next(r for r in descriptor["resources"] if r["name"] == "indicators")
    types = {f["name"]: f["type"] for f in indicators["schema"]["fields"]}
    assert types["period_start"] == "date" and types["value"] == "number" and types["indicator_id"] == "string"
    assert descriptor["licenses"][0]["name"] == "CC-BY-4.0"


def test_dcat_catalog_has_one_dataset_per_table(package) -> None:
    out, counts = package
    doc = json.loads((out / "catalog.jsonld").read_text())
    context = doc["@context"]
    assert context["dcat"] == DCAT and context["dct"] == DCT
    nodes = doc["@graph"]
    catalogs = [n for n in nodes if n["@type"] == "dcat:Catalog"]
    datasets = [n for n in nodes if n["@type"] == "dcat:Dataset"]
    assert len(catalogs) == 1 and len(datasets) == len(counts)
    assert {d["@id"] for d in datasets} == {c["@id"] for c in catalogs[0]["dcat:dataset"]}
    by_table = {d["dct:identifier"].rsplit(".", 1)[1]: d for d in datasets}
    assert set(by_table) == set(counts)
    for table, d in by_table.items():
        assert d["dct:title"] and d["dct:description"], table
        assert d["dct:publisher"]["foaf:name"] == "City of Riverton, Office of Data"
        assert d["dct:license"]["@id"] == "https://spdx.org/licenses/CC-BY-4.0.html"
        assert d["dct:spatial"]["skos:prefLabel"] == "Riverton" and "POLYGON" in d["dct:spatial"]["dcat:bbox"]["@value"]
        kinds = {x["dcat:mediaType"]["@id"].rsplit("/", 1)[1]: x for x in d["dcat:distribution"]}
        assert set(kinds) == {"csv", "vnd.apache.parquet"}
        for dist in kinds.values():
            url = dist["dcat:downloadURL"]["@id"]
            assert url.startswith("https://data.riverton.example/citylake/data/")
            assert (out / url.removeprefix("https://data.riverton.example/citylake/")).exists()
    temporal = by_table["indicators"]["dct:temporal"]
    with duckdb.connect(str(package[0].parent / "x.duckdb")) as con:
        lo, hi = con.execute(
            f"select min(period_start), max(period_start) from read_parquet('{out}/data/indicators.parquet')"
        ).fetchone()
    assert temporal["dcat:startDate"]["@value"] == lo.isoformat()
    assert temporal["dcat:endDate"]["@value"] == hi.isoformat()
    assert by_table["indicators"]["dcat:contactPoint"]["vcard:hasEmail"]["@id"] == "mailto:opendata@riverton.example"


def test_without_a_catalog_it_says_what_to_run(city_run: CityRun, tmp_path) -> None:
    cfg = yaml.safe_load(city_run.config.read_text())
    cfg["catalog"] = str(tmp_path / "none" / "catalog.duckdb")
    config = city_run.config.with_name("city.no_catalog.yaml")
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = citylake("publish-open-data", "--out", str(tmp_path / "out"), config=config, check=False)
    assert proc.returncode == 1 and "no analyst catalog" in proc.stderr and "citylake run" in proc.stderr
