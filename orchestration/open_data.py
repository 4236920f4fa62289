"""Open data out of the lake: the published indicators and marts as a package a city portal takes as it is.

`citylake publish-open-data [--out DIR]` reads the analyst catalog (the latest publication, so the package
holds exactly what analysts see) and writes, under DIR (default `<lake root>/open_data`; a local folder or,
for a lake on object storage, an `s3://bucket/prefix` the package is uploaded to):

    data/<table>.csv        one file per mart (UTF-8, header row, ISO 8601 dates and UTC times)
    data/<table>.parquet    the same rows, typed
    datapackage.json        a Frictionless Data Package: one tabular resource per CSV, its Table Schema
                            (field types, descriptions from the dbt docs), the licence and publisher
    catalog.jsonld          DCAT-AP (JSON-LD): a dcat:Catalog with one dcat:Dataset per table (title,
                            description, publisher, licence, temporal and spatial coverage, keywords)
                            and a CSV and a Parquet dcat:Distribution each

Which tables: every mart of the publication (`indicators`, `indicator_catalog`, `mart_*`); not the
quarantine (raw records, possibly personal) nor the districts' polygons. Who publishes under which
licence, and where the files will be served from, is `open_data:` in city.yaml (publisher, license,
base_url, contact); without base_url the download URLs are relative to the package. Files are written
aside and renamed into place, so a rerun replaces the package and never leaves a mix.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb

from orchestration.config import CityConfig

CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "vcard": "http://www.w3.org/2006/vcard/ns#",
    "locn": "http://www.w3.org/ns/locn#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}
MEDIA_TYPES = {
    "csv": "http://www.iana.org/assignments/media-types/text/csv",
    "parquet": "http://www.iana.org/assignments/media-types/application/vnd.apache.parquet",
}
#: EU file-type vocabulary, what DCAT-AP harvesters (data.europa.eu) expect in dct:format
FILE_TYPES = {
    "csv": "http://publications.europa.eu/resource/authority/file-type/CSV",
    "parquet": "http://publications.europa.eu/resource/authority/file-type/PARQUET",
}


@dataclass
class OpenDataResult:
    folder: Path | str  # a local folder, or the s3:// prefix the package was uploaded to
    tables: dict[str, int]  # table -> rows


#: the package's index files, uploaded last to object storage (after the files they name)
INDEX_FILES = ("datapackage.json", "catalog.jsonld")


def _frictionless_type(duckdb_type: str) -> str:
    t = duckdb_type.upper()
    if t in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"):
        return "integer"
    if t in ("DOUBLE", "FLOAT", "REAL") or t.startswith("DECIMAL"):
        return "number"
    if t == "BOOLEAN":
        return "boolean"
    if t == "DATE":
        return "date"
    if t.startswith("TIMESTAMP"):
        return "datetime"
    return "string"


def _csv_expression(name: str, duckdb_type: str) -> str:
    """The column as the CSV holds it: times in ISO 8601 (UTC with Z for zoned ones), the rest as is."""
    col = '"' + name.replace('"', '""') + '"'
    t = duckdb_type.upper()
    if t in ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"):
        return f"strftime(timezone('UTC', {col}), '%Y-%m-%dT%H:%M:%SZ') as {col}"
    if t.startswith("TIMESTAMP"):
        return f"strftime({col}, '%Y-%m-%dT%H:%M:%S') as {col}"
    if t not in ("VARCHAR", "DATE", "BOOLEAN") and _frictionless_type(t) == "string":
        return f"cast({col} as varchar) as {col}"  # lists, structs, JSON: their text
    return col


def _title(name: str) -> str:
    words = name.removeprefix("mart_").replace("_", " ")
    return words[:1].upper() + words[1:]


def publishable_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The marts of the catalog's publication (its `_published.delta_versions`)."""
    row = con.execute("select value from _published where key = 'delta_versions'").fetchone()
    if row is None:
        raise ValueError("the catalog has no publication record (_published.delta_versions); run `citylake run`")
    return sorted(json.loads(row[0]))


def _comments(con: duckdb.DuckDBPyConnection, table: str) -> tuple[str, list[tuple[str, str, str]]]:
    desc = con.execute(
        "select coalesce(comment, '') from duckdb_tables() where table_name = ? and schema_name = 'main'", [table]
    ).fetchone()[0]
    cols = con.execute(
        "select column_name, data_type, coalesce(comment, '') from duckdb_columns() "
        "where table_name = ? and schema_name = 'main' order by column_index",
        [table],
    ).fetchall()
    return desc, cols


def _temporal(con: duckdb.DuckDBPyConnection, table: str, cols: list[tuple[str, str, str]]) -> dict | None:
    """dct:temporal from the table's first date column (period_start in the indicators), else its first time."""
    dated = [c for c, t, _ in cols if t.upper() == "DATE"]
    dated = dated or [c for c, t, _ in cols if t.upper().startswith("TIMESTAMP")]
    if not dated:
        return None
    col = '"' + dated[0].replace('"', '""') + '"'
    lo, hi = con.execute(f'select cast(min({col}) as date), cast(max({col}) as date) from "{table}"').fetchone()
    if lo is None:
        return None
    return {
        "@type": "dct:PeriodOfTime",
        "dcat:startDate": {"@value": lo.isoformat(), "@type": "xsd:date"},
        "dcat:endDate": {"@value": hi.isoformat(), "@type": "xsd:date"},
    }


def _spatial(cfg: CityConfig) -> dict:
    """dct:spatial: the city, with the bounding box of its districts' boundaries (WKT, lon/lat)."""
    from shapely.geometry import shape

    features = json.loads(Path(cfg.boundaries).read_text(encoding="utf-8"))["features"]
    bounds = [shape(f["geometry"]).bounds for f in features if f.get("geometry")]
    place = {"@type": "dct:Location", "skos:prefLabel": cfg.name}
    if bounds:
        x0, y0 = min(b[0] for b in bounds), min(b[1] for b in bounds)
        x1, y1 = max(b[2] for b in bounds), max(b[3] for b in bounds)
        wkt = f"POLYGON(({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))"
        place["dcat:bbox"] = {"@value": wkt, "@type": "http://www.opengis.net/ont/geosparql#wktLiteral"}
    return place


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-._]+", "-", text.lower()).strip("-") or "city"


def publish_open_data(cfg: CityConfig, out: Path | str | None = None) -> OpenDataResult:
    """Write the open-data package of the latest publication under `out` (see the module docstring)."""
    target = str(out) if out else cfg.lake_path("open_data")
    if "://" not in target:
        return _write_package(cfg, Path(target))
    if not target.startswith("s3://"):
        raise ValueError(f"--out {target}: a local folder or an s3://bucket/prefix URI")
    with tempfile.TemporaryDirectory(prefix="citylake-open-data-") as tmp:
        result = _write_package(cfg, Path(tmp))
        _upload(Path(tmp), target)
    return OpenDataResult(target.rstrip("/"), result.tables)


def _upload(folder: Path, target: str) -> None:
    """Every file under `folder` to the same key under the s3:// `target`, the index files last."""
    from pyarrow import fs

    from orchestration.connectors.files import s3_filesystem
    from orchestration.lake import remote_errors

    s3 = s3_filesystem()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(folder).as_posix() in INDEX_FILES)
    prefix = target.removeprefix("s3://").rstrip("/")
    with remote_errors(target, "write the open-data package to", "--out, default under lake.root in city.yaml"):
        for path in files:
            fs.copy_files(
                str(path),
                f"{prefix}/{path.relative_to(folder).as_posix()}",
                source_filesystem=fs.LocalFileSystem(),
                destination_filesystem=s3,
            )


def _write_package(cfg: CityConfig, out: Path) -> OpenDataResult:
    from frictionless import Field, Package, Resource, Schema

    if not cfg.catalog_path.exists():
        raise FileNotFoundError(f"no analyst catalog at {cfg.catalog_path}: run `citylake run` first")
    settings = cfg.open_data
    publisher = settings.get("publisher") or cfg.name
    license_ = settings.get("license")
    base = settings.get("base_url", "")
    if base and not base.endswith("/"):
        base += "/"
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    resources, datasets, rows = [], [], {}
    con = duckdb.connect(str(cfg.catalog_path), read_only=True)
    try:
        info = dict(con.execute("select key, value from _published").fetchall())
        published_at = json.loads(info.get("published_at", "null"))
        spatial = _spatial(cfg)
        for table in publishable_tables(con):
            description, cols = _comments(con, table)
            rows[table] = con.execute(f'select count(*) from "{table}"').fetchone()[0]
            files = {}
            for fmt, options in (("csv", "format csv, header true"), ("parquet", "format parquet")):
                final = data / f"{table}.{fmt}"
                tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
                select = ", ".join(_csv_expression(c, t) for c, t, _ in cols) if fmt == "csv" else "*"
                con.execute(f"copy (select {select} from \"{table}\") to '{tmp}' ({options})")
                staged.append((tmp, final))
                files[fmt] = (f"data/{final.name}", tmp.stat().st_size)
            schema = Schema(
                fields=[
                    Field.from_descriptor(
                        {"name": c, "type": _frictionless_type(t), **({"description": d} if d else {})}
                    )
                    for c, t, d in cols
                ]
            )
            resource = Resource(
                name=table,
                path=files["csv"][0],
                title=_title(table),
                description=description or None,
                format="csv",
                mediatype="text/csv",
                encoding="utf-8",
                schema=schema,
                bytes=files["csv"][1],
            )
            resources.append(resource)
            datasets.append(
                _dataset(table, description, cfg, publisher, license_, base, files, published_at, spatial, con, cols)
            )
    finally:
        con.close()
    package = Package(
        name=_slug(f"{cfg.name}-citylake"),
        title=f"{cfg.name}: city indicators and domain marts",
        description=f"The indicators (ISO 37120 style) and domain marts {publisher} publishes from its citylake "
        "lakehouse, as CSV (this package's resources) and Parquet (beside each CSV).",
        resources=resources,
        created=published_at,
        licenses=[_license(license_)] if license_ else [],
        contributors=[{"title": publisher, "roles": ["publisher"]}],
    )
    catalog = {
        "@context": CONTEXT,
        "@graph": [
            {
                "@id": f"{base}catalog.jsonld" if base else "catalog.jsonld",
                "@type": "dcat:Catalog",
                "dct:title": f"{cfg.name} open data (citylake)",
                "dct:description": f"Indicators and domain marts published by {publisher}.",
                "dct:publisher": {"@type": "foaf:Agent", "foaf:name": publisher},
                "dct:modified": {"@value": published_at, "@type": "xsd:dateTime"},
                "dcat:dataset": [{"@id": d["@id"]} for d in datasets],
                **({"dct:license": {"@id": _license(license_)["path"]}} if license_ else {}),
            },
            *datasets,
        ],
    }
    for name, text in zip(
        INDEX_FILES,
        (
            json.dumps(package.to_descriptor(), indent=2, ensure_ascii=False),
            json.dumps(catalog, indent=2, ensure_ascii=False),
        ),
        strict=True,
    ):
        tmp = out / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text + "\n", encoding="utf-8")
        staged.append((tmp, out / name))
    for tmp, final in staged:
        os.replace(tmp, final)
    return OpenDataResult(out, rows)


def _license(value: str) -> dict:
    """A Data Package licence from city.yaml's `open_data.license`: a URL, or an SPDX id."""
    if "://" in value:
        return {"path": value, "title": value}
    return {"name": value, "path": f"https://spdx.org/licenses/{value}.html", "title": value}


def _dataset(
    table: str,
    description: str,
    cfg: CityConfig,
    publisher: str,
    license_: str | None,
    base: str,
    files: dict[str, tuple[str, int]],
    published_at: str,
    spatial: dict,
    con: duckdb.DuckDBPyConnection,
    cols: list[tuple[str, str, str]],
) -> dict:
    licence = {"dct:license": {"@id": _license(license_)["path"]}} if license_ else {}
    temporal = _temporal(con, table, cols)
    contact = cfg.open_data.get("contact")
    return {
        "@id": f"{base}datasets/{table}" if base else f"urn:citylake:{_slug(cfg.name)}:{table}",
        "@type": "dcat:Dataset",
        "dct:identifier": f"{_slug(cfg.name)}.{table}",
        "dct:title": f"{cfg.name}: {_title(table)}",
        "dct:description": description or f"The {table} table of {cfg.name}'s citylake lakehouse.",
        "dct:publisher": {"@type": "foaf:Agent", "foaf:name": publisher},
        "dct:issued": {"@value": published_at, "@type": "xsd:dateTime"},
        "dct:modified": {"@value": published_at, "@type": "xsd:dateTime"},
        "dct:spatial": spatial,
        **({"dct:temporal": temporal} if temporal else {}),
        "dcat:keyword": ["city indicators", "ISO 37120", *table.removeprefix("mart_").split("_")],
        **(
            {
                "dcat:contactPoint": {
                    "@type": "vcard:Organization",
                    "vcard:fn": publisher,
                    ("vcard:hasEmail" if "@" in contact else "vcard:hasURL"): {
                        "@id": f"mailto:{contact}" if "@" in contact and ":" not in contact else contact
                    },
                }
            }
            if contact
            else {}
        ),
        **licence,
        "dcat:distribution": [
            {
                "@type": "dcat:Distribution",
                "dct:title": f"{table}.{fmt}",
                "dcat:downloadURL": {"@id": f"{base}{path}"},
                "dcat:accessURL": {"@id": f"{base}{path}"},
                "dcat:mediaType": {"@id": MEDIA_TYPES[fmt]},
                "dct:format": {"@id": FILE_TYPES[fmt]},
                "dcat:byteSize": {"@value": str(size), "@type": "xsd:nonNegativeInteger"},
                **licence,
            }
            for fmt, (path, size) in files.items()
        ],
    }
