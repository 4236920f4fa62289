"""city.yaml as a typed model: every key, its type, its default and what it means, in one place.

`orchestration.config.load_config` validates the raw YAML against `CityFile` before anything else, so a
key the model does not know (a misspelt `personal_date:` meant to keep personal data out of the lake)
or a value of the wrong type is refused naming its full key path, the closest valid key and the
expected type (`problems`). The hand-written checks in config.py then check what a type cannot say
(names, SQL expressions, globs, time zones, files that must exist).

A top-level key starting with `x-` is ignored: a place for blocks that only hold YAML anchors
(cities/nyc/city.yaml's `x-dsny: &dsny`).

The model is also published as a JSON Schema for editors (docs/cities.md, "Editor support"):

    python -m orchestration.city_schema > docs/city.schema.json
"""

import datetime as dt
import difflib
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orchestration.entities import ENTITIES

SOURCE_KINDS = ("postgres", "mysql", "sqlite", "http_json", "files", "mqtt")
FILE_FORMATS = ("csv", "xlsx", "json", "jsonl", "parquet")
DISTRICT_METHODS = ("coordinates", "code", "name")
PAGINATION_STYLES = ("page", "offset", "next")
#: top-level keys with this prefix are ignored (blocks that only hold YAML anchors)
EXTENSION_PREFIX = "x-"
SCHEMA_ID = "https://github.com/citylake/citylake/blob/main/docs/city.schema.json"


def shown(value: Any) -> str:
    """A value as an error message shows it: its type and a bounded repr (never a whole hostile value)."""
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


# --- value types: each names, in words, what it expects (the error message says it) ----------------


def _expect(expected: str, choice: bool = False) -> WrapValidator:
    """Replace pydantic's own wording of a wrong value by `expected` ("a whole number from 1 to 100")."""

    def check(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "citylake_value", "{expected}", {"expected": expected, "choice": choice}
            ) from None

    return WrapValidator(check)


def _span(low: float, high: float) -> str:
    return f"{low:_} to {high:_}".replace("_", " ")


def _whole(low: int, high: int) -> Any:
    return Annotated[int, Field(ge=low, le=high), _expect(f"a whole number from {_span(low, high)}")]


def _number(low: float, high: float) -> Any:
    return Annotated[float, Field(ge=low, le=high), _expect(f"a number from {_span(low, high)}")]


def _choice(values: tuple[str, ...], what: str) -> Any:
    use = values[0] if len(values) == 1 else f"one of {', '.join(values)}"
    return Annotated[Literal[values], _expect(f"{what}; use {use}", choice=True)]


Text = Annotated[str, _expect("text")]
#: text where YAML may have read a number or a date (`name: 1984`): taken as its text
Scalar = Annotated[str | int | float | dt.date, _expect("text"), WithJsonSchema({"type": ["string", "number"]})]
Flag = Annotated[bool, _expect("true or false")]
#: one column name or a list of them
Columns = Annotated[
    str | list[str],
    _expect("a column name or a list of column names, e.g. [stop_id, service_date]"),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]
TextList = Annotated[list[str], _expect("a list of text values, e.g. [a, b]")]
#: a source column or one scalar SQL expression over the source's row
Expression = Scalar
Entity = _choice(tuple(ENTITIES), "a conformed entity")
#: who answers for an asset, as Dagster shows owners: an email address or team:<name>
Owner = Annotated[
    str,
    Field(pattern=r"^(team:[A-Za-z0-9_.-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$"),
    _expect("an email address or team:<name> (letters, digits, _ . -), e.g. owner: team:environment"),
]


class _Model(BaseModel):
    """extra="forbid": a key the model does not name is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)


# --- a source's blocks ----------------------------------------------------------------------------


class District(_Model):
    """How a record is placed in a district."""

    from_: _choice(DISTRICT_METHODS, "a district method") = Field(alias="from")
    """coordinates (point in the boundaries), code (the district's code) or name (via the crosswalk)."""
    column: Expression | None = None
    """from: code or name: the source column (or SQL expression) holding the district code or name."""
    lat: Expression | None = None
    """from: coordinates: the latitude column (or SQL expression)."""
    lon: Expression | None = None
    """from: coordinates: the longitude column (or SQL expression)."""


class Freshness(_Model):
    """The newest row must be at most max_delay_hours old (a bronze quality gate)."""

    column: Text
    """The timestamp column whose newest value is checked."""
    max_delay_hours: _number(0.001, 87_840)
    """How old the newest row may be, in hours."""


class Volume(_Model):
    """The bronze table may not shrink by more than max_drop between validated runs."""

    max_drop: _number(0, 1) = 0.5
    """The largest share of rows that may disappear between validated runs (0 to 1)."""


class PersonalData(_Model):
    """Personal data kept out of the lake, applied as the source is read (docs/cities.md)."""

    drop: Columns | None = None
    """Columns removed before anything is written (a dotted name reaches into a JSON column)."""
    hash: Columns | None = None
    """Columns stored as the HMAC-SHA256 of their text, keyed by CITYLAKE_PII_KEY."""


class Pagination(_Model):
    """How an API's pages are requested (http_json)."""

    style: _choice(PAGINATION_STYLES, "a pagination style") = "page"
    """page (page numbers), offset (row offsets) or next (a next-page link in the body or Link header)."""
    param: Text | None = None
    """The page (or offset) query parameter; default page (style page) or offset (style offset)."""
    size_param: Text | None = None
    """The page-size query parameter; default page_size (style page) or limit (style offset)."""
    size: _whole(0, 1_000_000) = 1000
    """Records per page."""
    start: _whole(0, 1_000_000) = 1
    """The first page number (style page)."""
    next_path: Text | None = None
    """style next: the dotted path of the next page's URL in the body (default: the Link header)."""


class HttpCursor(_Model):
    """Incremental reads of an API: the stored maximum of field is sent as param."""

    field: Text
    """The record field whose maximum is kept between runs."""
    param: Text
    """The query parameter that receives it."""


# --- the six source kinds ---------------------------------------------------------------------------


class _Source(_Model):
    """What every source kind takes."""

    primary_key: Columns
    """The source columns that identify a record, e.g. [stop_id, service_date]."""
    schedule: Text | None = None
    """A cron string: when the source is read, e.g. "0 3 * * *" (03:00 daily)."""
    timezone: Text | None = None
    """The IANA zone local times are in (default: the city's)."""
    feeds: Entity | None = None
    """The conformed entity the source fills."""
    columns: dict[str, Expression] | None = None
    """Conformed column -> source column or SQL expression over the source's row."""
    district: District | None = None
    """How a record is placed in a district."""
    units: dict[str, Text] | None = None
    """Quantity -> the unit the source reports it in, e.g. {no2: ppb}."""
    freshness: Freshness | None = None
    """The newest row must be at most this old."""
    volume: Volume = Volume()
    """The table may not shrink by more than max_drop between validated runs."""
    personal_data: PersonalData | None = None
    """Columns dropped or hashed before anything is written to bronze or quarantine."""
    owner: Owner | None = None
    """Who answers for the source's data: an email address or team:<name>. The Dagster UI shows it as
    the owner of the source's bronze asset and of the models it feeds."""


class _SqlSource(_Source):
    table: Text | None = None
    """[schema.]table to read (or write query:)."""
    query: Text | None = None
    """One read statement (select/with) instead of table:."""
    cursor: Text | None = None
    """A column: only rows with cursor >= the last stored value are read again."""
    batch_rows: _whole(1, 10_000_000) = 50_000
    """Rows streamed from the database per batch."""


class PostgresSource(_SqlSource):
    """A PostgreSQL table or query."""

    kind: Literal["postgres"]
    dsn: Text
    """The connection string, e.g. ${TRANSPORT_DB_DSN}."""


class MysqlSource(_SqlSource):
    """A MySQL or MariaDB table or query."""

    kind: Literal["mysql"]
    dsn: Text
    """The connection string, e.g. ${PARKING_DB_DSN}."""


class SqliteSource(_SqlSource):
    """A table or query of an SQLite file."""

    kind: Literal["sqlite"]
    path: Text
    """The SQLite database file (relative to city.yaml)."""


class HttpJsonSource(_Source):
    """An HTTP JSON API (Open311 GeoReport v2 works as is)."""

    kind: Literal["http_json"]
    url: Text
    """The endpoint (may hold ${VAR})."""
    pagination: Pagination | None = None
    """How pages are requested (default: one request)."""
    cursor: HttpCursor | None = None
    """{field, param}: the stored maximum of field is sent as param."""
    headers: dict[str, Scalar] | None = None
    """Request headers, e.g. {Authorization: "Bearer ${TOKEN}"}."""
    records_path: Text | None = None
    """The dotted path of the records array when it is nested in an object."""
    timeout_s: _number(0.001, 3600) = 30
    """Seconds each request may take (`citylake check` probes wait 10 unless set)."""
    max_retries: _whole(0, 100) = 5
    """Retries on 429, 5xx, timeouts and truncated bodies."""
    backoff_s: _number(0, 3600) = 0.5
    """The first wait between retries, doubled each try (jittered, capped at 30 s)."""
    allowed_origins: TextList | None = None
    """Origins (scheme://host[:port]) other than url's that pages and redirects may come from."""


class FilesSource(_Source):
    """File drops from a folder glob (each file is loaded once)."""

    kind: Literal["files"]
    path: Text
    """A local glob (`**` recurses) or s3://bucket/prefix/*.csv."""
    format: _choice(FILE_FORMATS, "a file format")
    """The files' format."""
    encoding: Text = "utf-8"
    """The text encoding (a BOM is accepted)."""
    delimiter: Text = ","
    """CSV: the one-character field separator."""
    header: Flag = True
    """CSV: the first row names the columns."""
    sheet: Text | None = None
    """XLSX: the worksheet to read (default: the first)."""
    records_path: Text | None = None
    """JSON: the dotted path of the records array."""
    max_document_mb: _number(1, 100_000) = 100
    """JSON: the largest document parsed whole, in MB."""
    sensor: Flag = True
    """Start a run when new files arrive."""
    sensor_interval_s: _whole(1, 86_400) = 30
    """Seconds between looks for new files."""


class MqttSource(_Source):
    """Sensor messages from an MQTT broker, landed by `citylake listen`."""

    kind: Literal["mqtt"]
    topic: Text
    """The topic filter, e.g. city/air/+."""
    url: Text = "mqtt://127.0.0.1:1883"
    """The broker: mqtt://host:1883 or mqtts://host:8883 (may hold ${VAR} credentials)."""
    qos: _whole(0, 2) = 1
    """The subscription's MQTT QoS."""
    client_id: Text | None = None
    """The fixed client id of the subscription (default citylake-<agency>-<source>)."""
    landing: Text | None = None
    """The folder batch files land in (default landing/<agency>/<source> beside city.yaml)."""
    batch_rows: _whole(1, 10_000_000) = 50_000
    """Rows committed to bronze at once."""
    sensor: Flag = True
    """Start a run when batches land."""
    sensor_interval_s: _whole(1, 86_400) = 30
    """Seconds between looks for new batches."""


Source = Annotated[
    PostgresSource | MysqlSource | SqliteSource | HttpJsonSource | FilesSource | MqttSource,
    Field(discriminator="kind"),
]
SOURCE_MODELS: dict[str, type[_Source]] = {
    "postgres": PostgresSource,
    "mysql": MysqlSource,
    "sqlite": SqliteSource,
    "http_json": HttpJsonSource,
    "files": FilesSource,
    "mqtt": MqttSource,
}


# --- the rest of the file ---------------------------------------------------------------------------


class City(_Model):
    name: Scalar
    """The city's name."""
    timezone: Text
    """The city's IANA time zone, e.g. America/Chicago."""


class Lake(_Model):
    root: Text
    """A folder (relative to city.yaml) or an s3://bucket/prefix URI (credentials and endpoint from the AWS_*
    environment, commits by conditional put: docs/deploy.md)."""


class PopulationFormat(_Model):
    """A census table not in the columns code, population, year: published wide (one column per census
    year), or long (a row per district and year) under its own column names."""

    layout: _choice(("wide", "long"), "a population layout")
    """wide: one column per census year; long: a row per district and census year."""
    code: Expression | None = None
    """The column (or SQL expression) giving the district code (required for wide; long: default `code`)."""
    year_columns: Text | None = None
    """wide only (required): a regex matching the census-year columns; group 1 is the year."""
    population: Expression | None = None
    """long only: the column (or SQL expression) giving the population (default `population`)."""
    year: Expression | None = None
    """long only: the column (or SQL expression) giving the census year (default `year`)."""


class Districts(_Model):
    boundaries: Text
    """A GeoJSON file, one feature per district."""
    population: Text
    """A CSV with columns code, population, year."""
    code_property: Scalar = "code"
    """The GeoJSON property holding the district code."""
    name_property: Scalar = "name"
    """The GeoJSON property holding the district name."""
    population_format: PopulationFormat | None = None
    """How to read a population table that is not code, population, year."""


class ReferenceData(_Model):
    """CSVs replacing the built-in dbt seeds for this city."""

    district_crosswalk: Text | None = None
    """Columns alias, district_code."""
    service_categories: Text | None = None
    """Columns service_code, service_name, category, target_days."""
    waste_streams: Text | None = None
    """Columns source_label, stream."""


class Open311(_Model):
    data: Text
    """The requests file the simulated Open311 API serves."""
    port: _whole(1, 65535) = 8311
    """The port it listens on (127.0.0.1)."""


class Simulators(_Model):
    """Agency systems the reference city simulates (real cities leave this out)."""

    open311: Open311 | None = None
    """The simulated Open311 API."""


class PostgresSink(_Model):
    dsn: Text
    """The connection string, e.g. ${CITYLAKE_PG_DSN}."""
    schema_: Text = Field("citylake", alias="schema")
    """The schema the marts are copied into."""
    reader_role: Text | None = None
    """A role granted SELECT on the schema."""


class Sinks(_Model):
    """Copies of the published marts for BI tools."""

    postgres: PostgresSink | None = None
    """A PostgreSQL copy."""


class Alerts(_Model):
    webhook: Text | None = None
    """An http(s) URL (or ${ALERT_WEBHOOK_URL}) a failed run step POSTs a JSON alert to."""


class Partitions(_Model):
    start: Annotated[
        dt.date | str, _expect("a date, e.g. 2025-01-01"), WithJsonSchema({"type": "string", "format": "date"})
    ] = dt.date(2000, 1, 1)
    """The first daily partition: older records are kept in it."""


class DeduplicateRule(_Model):
    match: TextList
    """Conformed columns whose equal values mean the same real-world record."""
    prefer: TextList | None = None
    """agency/source names, the first one's record kept."""


class OpenData(_Model):
    """What the open-data package (`citylake publish-open-data`) says about who publishes it."""

    publisher: Text | None = None
    """The publishing body, e.g. City of Riverton (default: the city's name)."""
    license: Text | None = None
    """The licence of the data: a URL or an SPDX id, e.g. CC-BY-4.0 (default: none stated)."""
    base_url: Text | None = None
    """Where the package's files will be served from, e.g. https://data.riverton.gov/citylake/ (download
    URLs are relative to the package when unset)."""
    contact: Text | None = None
    """A contact point for the datasets (an email address or a URL)."""


class CityFile(_Model):
    """A citylake city.yaml: one city, its lake and its agencies' sources (docs/cities.md)."""

    model_config = ConfigDict(
        title="citylake city.yaml",
        json_schema_extra={"patternProperties": {f"^{EXTENSION_PREFIX}": {}}},
    )

    city: City
    """The city's name and time zone."""
    lake: Lake
    """Where the lake is."""
    catalog: Text | None = None
    """The analyst DuckDB catalog (default <lake root>/catalog.duckdb; required when the lake is on s3://)."""
    state_dir: Text = "./.citylake"
    """citylake's working state: the dbt build, the warehouse and the Dagster instance."""
    partitions: Partitions | None = None
    """The daily partitions of the time-based assets."""
    districts: Districts
    """The city's districts and their population."""
    reference_data: ReferenceData | None = None
    """CSVs replacing the built-in dbt seeds."""
    simulators: Simulators | None = None
    """Agency systems the reference city simulates."""
    agencies: dict[str, dict[str, Source] | None] | None = None
    """<agency>: <source>: {kind: ..., ...}."""
    sinks: Sinks | None = None
    """Copies of the published marts."""
    alerts: Alerts | None = None
    """Where a failed run step is reported."""
    deduplicate: dict[str, DeduplicateRule | None] | None = None
    """<entity>: {match, prefer}: records delivered by several sources counted once."""
    open_data: OpenData | None = None
    """Publisher, licence and download location of the open-data package."""

    @model_validator(mode="before")
    @classmethod
    def _without_extensions(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith(EXTENSION_PREFIX))}
        return data


def source_defaults(kind: str) -> dict[str, Any]:
    """The default of each optional key of a source of this kind (the values `Source.get` falls back to)."""
    model = SOURCE_MODELS.get(kind)
    if model is None:
        return {}
    out = {}
    for name, info in model.model_fields.items():
        value = info.get_default()
        if value is not None and not info.is_required():
            out[info.alias or name] = value.model_dump(by_alias=True) if isinstance(value, BaseModel) else value
    return out


def default(model: type[BaseModel], key: str) -> Any:
    """The default of `key` in `model` (e.g. default(Districts, "code_property"))."""
    return next(info.get_default() for name, info in model.model_fields.items() if key in (name, info.alias))


# --- the JSON Schema and the error messages ---------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """The JSON Schema of city.yaml (docs/city.schema.json)."""
    schema = CityFile.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


_SCHEMA: dict[str, Any] = {}


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow $ref and drop the `null` of an optional value."""
    for _ in range(8):
        if "$ref" in node:
            node = _SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        elif "anyOf" in node and len(members := [m for m in node["anyOf"] if m.get("type") != "null"]) == 1:
            node = members[0]
        else:
            break
    return node


def _schema_at(loc: tuple) -> dict[str, Any]:
    """The schema node of a pydantic error location (union tags in `loc` pick the source kind)."""
    if not _SCHEMA:
        _SCHEMA.update(json_schema())
    node = _resolve(_SCHEMA)
    for part in loc:
        mapping = node.get("discriminator", {}).get("mapping", {})
        if part in mapping:
            node = _resolve({"$ref": mapping[part]})
        elif part in node.get("properties", {}):
            node = _resolve(node["properties"][part])
        elif isinstance(node.get("additionalProperties"), dict):
            node = _resolve(node["additionalProperties"])
    return node


def _walk(data: Any, loc: tuple) -> tuple[list[str], Any]:
    """The key path (as written in city.yaml) of an error location and the value there; location parts
    that are no key of the document (union tags, pydantic's `[key]`) are skipped."""
    keys: list[str] = []
    value = data
    for part in loc:
        if isinstance(value, dict) and part in value:
            keys.append(str(part)[:80])
            value = value[part]
    return keys, value


def _where(keys: list[str]) -> str:
    """A key path as messages start: `agencies.transport.rides.table`."""
    return ".".join(keys) or "city.yaml"


def _unknown_key(data: dict, loc: tuple) -> str:
    """An unknown key: its path, the closest valid key at that level (or all of them) and the fix."""
    node = _schema_at(loc[:-1])
    valid = sorted(node.get("properties", {}))
    keys, _ = _walk(data, loc)
    _, parent = _walk(data, loc[:-1])
    key = str(loc[-1])[:80]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    # a top-level key that is no key of city.yaml names the file first
    where = _where(keys) if len(keys) > 1 else f"city.yaml: {key}"
    if close and close[0] in node.get("required", ()) and close[0] not in parent:
        return (
            f"{_where([*keys[:-1], close[0]])} is missing; did you mean it instead of {key}? rename {key} to {close[0]}"
        )
    if close:
        return f"{where}: unknown key; did you mean {close[0]}?"
    extension = (
        f"; a block that only holds YAML anchors may be named {EXTENSION_PREFIX}<name>" if len(keys) == 1 else ""
    )
    keys_here = f"{', '.join(valid[:-1])} and {valid[-1]}" if len(valid) > 1 else ", ".join(valid)
    return f"{where}: unknown key; use {keys_here}{extension}"


def problems(data: dict) -> tuple[list[str], list[str]]:
    """What `CityFile` finds wrong in a city.yaml document, as messages naming the key path and the fix:
    (refused now: unknown keys and values of the wrong type; left to config.py's own checks, which
    know a better hint, and refused only if they pass: missing keys, empty values and names)."""
    try:
        CityFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    else:
        return [], []
    now: list[str] = []
    later: list[str] = []
    for error in errors:
        loc = tuple(error["loc"])
        keys, value = _walk(data, loc)
        kind = error["type"]
        where = _where(keys)
        if kind in ("extra_forbidden", "invalid_key"):
            now.append(_unknown_key(data, loc))
        elif kind == "missing":
            hint = _schema_at(loc).get("description", "see docs/cities.md")
            later.append(f"{_where([*keys, str(loc[-1])])} is missing: {hint}")
        elif kind == "union_tag_not_found":
            later.append(f"{where}.kind is missing: set it to one of {', '.join(SOURCE_KINDS)}")
        elif "[key]" in loc or value is None:
            later.append(f"{where}: {error['msg']}, got {shown(value)}")
        elif kind == "union_tag_invalid":
            now.append(
                f"{where}.kind: {shown(value['kind'])} is not a source kind; use one of {', '.join(SOURCE_KINDS)}"
            )
        elif kind == "citylake_value":
            ctx = error["ctx"]
            now.append(
                f"{where}: {shown(value)} is not {ctx['expected']}"
                if ctx["choice"]
                else f"{where}: {ctx['expected']}, got {shown(value)}"
            )
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            now.append(f"{where} must be a mapping (key: value lines), got {type(value).__name__}")
        else:
            now.append(f"{where}: {error['msg']}, got {shown(value)}")
    return now, later


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
