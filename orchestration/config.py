"""city.yaml: loading, validation and the typed view the rest of citylake reads.

Where the file is: `--config PATH`, else the `CITYLAKE_CONFIG` variable, else `./city.yaml`, else (a checkout
of citylake) the reference city, `cities/riverton/city.yaml`.
Relative paths in the file are relative to the file's own folder, so a config works from any
working directory. Secrets are written as `${ENV_VAR}` and resolved from the environment only when a
source is used, so `citylake check` can name a missing variable without printing any value.

Every key, its type, its default and its meaning are one typed model, `orchestration/city_schema.py`
(published for editors as docs/city.schema.json). `load_config` checks the raw YAML against it first:
a key the model does not name is an error at every level (naming the key path and the closest valid
key: `personal_date: unknown key; did you mean personal_data?`), as is a value of the wrong type; only
top-level `x-<name>` blocks (YAML anchors) are ignored. The checks here then test what a type cannot
say. `Source.get` falls back to the model's defaults.

Top-level keys (the user-facing contract is in README.md; every key is documented there too):

- `city`: `name`, `timezone` (IANA).
- `lake`: `root`, a folder or an `s3://bucket/prefix` URI (credentials and endpoint from the AWS_*
  environment, AWS_CONDITIONAL_PUT for the commit mode: orchestration/lake.py, docs/deploy.md).
- `catalog`: path of the analyst DuckDB catalog (default `<lake root>/catalog.duckdb`; required when
  the lake is on object storage, since DuckDB files live on a local disk).
- `state_dir`: where citylake keeps its working state: the dbt build, the warehouse DuckDB file and
  the Dagster instance (default `./.citylake` beside the config file).
- `districts`: `boundaries` (GeoJSON), `code_property` (default `code`), `name_property` (default
  `name`), `population` (CSV with columns code, population, year), `population_format` (optional,
  for a census table published wide, one column per census year: `{layout: wide, code: <column or
  SQL expression giving the district code>, year_columns: <regex whose group 1 is the year>}`; or
  long under its own column names: `{layout: long, code: ..., population: ..., year: ...}`, each a
  column or SQL expression, defaults `code`, `population`, `year`).
- `reference_data`: optional CSVs that replace the built-in dbt seeds for this city:
  `district_crosswalk` (alias, district_code), `service_categories`
  (service_code, service_name, category, target_days), `waste_streams` (source_label, stream).
- `simulators`: agency systems the reference city simulates, started by `citylake demo/run/check/dev`
  when they load a source that reads one, or reused when already running for this city
  (`open311: {data: path, port: 8311}`). Real cities leave it out.
- `agencies`: `<agency>: <source>: {...}`: see `Source`.
- `agencies.<agency>.<source>.personal_data`: `{drop: [columns], hash: [columns]}`, applied as the source
  is read, before anything is written to bronze or quarantine: dropped columns never reach the lake,
  hashed ones land as the HMAC-SHA256 hex digest of their text, keyed by the `CITYLAKE_PII_KEY`
  environment variable (at least 16 characters; required when `hash:` is used; never logged). A
  dotted name (`contact.email`) reaches into a column holding a JSON object (nested API fields land
  as JSON text), unless a column of that exact name exists. Primary-key columns may be hashed, not
  dropped; the cursor column may be neither. See orchestration/privacy.py.
- `alerts`: `{webhook: URL}`: a failed run step POSTs a JSON alert (city, run, step, error) there;
  the URL may be `${ALERT_WEBHOOK_URL}`.
- `partitions`: `{start: 2025-01-01}`: the first of the daily partitions the time-based assets (the
  per-entity intermediate models and the conformed facts) are split into, by the day of each record
  in the city's time zone. Without the key nothing is partitioned: every run rebuilds them whole
  (docs/operations.md); a `partitions:` block without `start` starts at 2000-01-01. Older records
  are kept in that first partition (the history), so set it where day-by-day operation starts: a
  run over N days records N events per daily asset in Dagster. A record dated in the future (after
  today on the city's clock) or before 1900 is quarantined with that reason.
- `sinks`: optional copies of the published marts for BI tools. Only `postgres` so far:
  `sinks: {postgres: {dsn: ${CITYLAKE_PG_DSN}, schema: citylake, reader_role: citylake_reader}}`;
  `schema` defaults to `citylake`, `reader_role` (granted SELECT on the schema) is optional. The dsn is
  resolved from the environment only when the sink runs.
- `deduplicate`: optional, per conformed entity, how records of one real-world thing delivered by
  several sources are counted once: `deduplicate: {road_collisions: {match: [accident_at, latitude,
  longitude], prefer: [safety/collisions, police/incidents]}}`. `match` lists the entity's conformed
  columns whose equal values mean "the same record"; `prefer` (optional) orders the feeding sources
  (`agency/source`) whose record is kept, unlisted sources after them, then the latest ingested. Opt-in:
  two sources may rightly deliver equal values (see docs/indicators.md, "Duplicates").

What the file may hold (docs/cities.md, "What city.yaml may contain"): at most MAX_CONFIG_BYTES of UTF-8,
MAX_DEPTH levels and MAX_NODES values once anchors/aliases are expanded, no key twice in a mapping;
agency, source and sink names match NAME_RULE; column names (primary_key, cursor, freshness.column) are
COLUMN_RULE; `table:` is [schema.]table; `query:` one SELECT (`query_problem` in sql_rules); a
`columns:`/`district:`/`population_format` column value one scalar SQL expression over the source's row
(`expression_problem` in dbt_build); a files glob has no `..` after its first wildcard. Known keys have
their types and ranges (the model's); unknown keys are refused.
"""

from __future__ import annotations

import codecs
import copy
import datetime as dt
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from orchestration import city_schema
from orchestration.city_schema import DISTRICT_METHODS, FILE_FORMATS, SOURCE_KINDS, source_defaults
from orchestration.city_schema import shown as _shown
from orchestration.entities import ENTITIES
from orchestration.sql_rules import DIALECTS, query_problem

DEFAULT_CONFIG = "city.yaml"
#: the reference city of a checkout: the config when none is named and there is no ./city.yaml
REFERENCE_CONFIG = "cities/riverton/city.yaml"
#: the earliest day a record may have (older ones are held back); where an unpartitioned city's days start
EARLIEST = dt.date(1900, 1, 1)
__all__ = ["DISTRICT_METHODS", "FILE_FORMATS", "SOURCE_KINDS"]
#: agency, source and sink names: they become asset keys, Delta folders, dbt model names (stg_<agency>__<source>)
#: and PostgreSQL identifiers, so lower_snake_case, at most 63 characters and no '__' (the model-name separator)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
NAME_RULE = "lower_snake_case: a letter, then letters, digits and _ (at most 63 characters, no '__')"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """city.yaml is wrong: the message names the file, the key and the fix."""


def config_path(explicit: str | os.PathLike | None = None) -> Path:
    """The config file to use: the explicit path, else $CITYLAKE_CONFIG, else ./city.yaml, else (in a
    checkout of citylake, with no city.yaml of one's own) the reference city's cities/riverton/city.yaml."""
    chosen = explicit or os.environ.get("CITYLAKE_CONFIG")
    if not chosen:
        reference = not Path(DEFAULT_CONFIG).exists() and Path(REFERENCE_CONFIG).exists()
        chosen = REFERENCE_CONFIG if reference else DEFAULT_CONFIG
    return Path(chosen).resolve()


PII_KEY_ENV = "CITYLAKE_PII_KEY"
#: how old a source's last load may be (hours) when its `freshness:` says nothing: a daily load with slack
DEFAULT_MAX_DELAY_HOURS = 26
PII_KEY_MIN_CHARS = 16
PERSONAL_DATA_ACTIONS = ("drop", "hash")


def pii_key(where: str) -> bytes:
    """The key of the personal-data HMAC, from `CITYLAKE_PII_KEY` (never log it); `where` names the source."""
    value = os.environ.get(PII_KEY_ENV, "")
    fix = (
        "export a random key of at least 16 characters, e.g. "
        "CITYLAKE_PII_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))'), and keep it: "
        "every hash depends on it"
    )
    if not value:
        raise ConfigError(f"{where}.personal_data.hash: environment variable {PII_KEY_ENV} is not set; {fix}")
    if len(value) < PII_KEY_MIN_CHARS:
        raise ConfigError(
            f"{where}.personal_data.hash: {PII_KEY_ENV} has {len(value)} characters, too short to keep hashed "
            f"values from being guessed; {fix}"
        )
    return value.encode()


def resolve_env(value: str, where: str) -> str:
    """Replace `${VAR}` with the variable's value; a missing variable is an error naming the key."""

    def sub(match: re.Match) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set; export it before running")
        return os.environ[name]

    return _ENV.sub(sub, value)


@dataclass(frozen=True)
class Source:
    """One agency source (`agencies.<agency>.<name>`).

    kind: postgres | mysql | sqlite | http_json | files | mqtt
    dsn (postgres, mysql), path (sqlite file; files glob), table or query (SQL kinds),
    url, pagination, cursor, headers, records_path, allowed_origins (http_json), format and csv options (files),
    topic (mqtt), primary_key, cursor (SQL: a column), schedule (cron), timezone (the zone local
    times are in; default the city's), max_document_mb (files, format json: the largest document
    parsed whole, 100), feeds (a conformed entity), columns (conformed column ->
    source column or SQL expression), district ({from: coordinates|code|name, ...}), units,
    freshness ({column, max_delay_hours}: the newest row must be at most that old), volume
    ({max_drop}: the table may not shrink by more than this share between validated runs; 0.5),
    personal_data ({drop: [...], hash: [...]}: see the module docstring). The keys each kind takes, their
    types and defaults: city_schema's PostgresSource ... MqttSource.
    """

    agency: str
    name: str
    kind: str
    raw: dict[str, Any]
    base_dir: Path
    primary_key: tuple[str, ...]
    timezone: str
    feeds: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    district: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    schedule: str | None = None
    #: personal_data: {"drop": (...), "hash": (...)}, both always present (empty: nothing to do)
    personal_data: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"drop": (), "hash": ()})

    @property
    def key(self) -> str:
        return f"{self.agency}/{self.name}"

    @property
    def where(self) -> str:
        return f"agencies.{self.agency}.{self.name}"

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key` as written, else its default in the model (city_schema), else `default`."""
        if key in self.raw:
            return self.raw[key]
        return copy.deepcopy(source_defaults(self.kind).get(key, default))

    def secret(self, key: str) -> str:
        """A connection string with `${VAR}` resolved (never log the result)."""
        return self.secret_value(self.raw[key], key)

    def secret_value(self, value: object, key: str) -> str:
        """Any value of this source's config with `${VAR}` resolved; `key` names it in errors."""
        return resolve_env(str(value), f"{self.where}.{key}")

    def local_path(self, key: str = "path") -> str:
        """A path-valued key resolved against the config file's folder (URIs kept as they are)."""
        return resolve_path(self.base_dir, str(self.raw[key]))


@dataclass(frozen=True)
class Deduplicate:
    """`deduplicate.<entity>`: records of different sources with equal `match` values are one record;
    the one kept comes from the first source in `prefer` (then unlisted sources, then the latest ingested)."""

    entity: str
    match: tuple[str, ...]
    prefer: tuple[str, ...] = ()


@dataclass(frozen=True)
class CityConfig:
    """The validated city.yaml."""

    path: Path
    name: str
    timezone: str
    lake_root: str
    catalog_path: Path
    state_dir: Path
    boundaries: Path
    code_property: str
    name_property: str
    population: Path
    reference_data: dict[str, Path]
    simulators: dict[str, Any]
    sources: tuple[Source, ...]
    #: districts.population_format: how to read a population table that is not `code, population, year`
    population_format: dict[str, str] = field(default_factory=dict)
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: dict[str, Any] = field(default_factory=dict)
    #: partitions.start: the first daily partition; None (no `partitions:` key): the time-based models
    #: are not partitioned, every run rebuilds them whole
    partitions_start: dt.date | None = None
    #: deduplicate: entity -> the rule that counts a record delivered by several sources once
    deduplicate: dict[str, Deduplicate] = field(default_factory=dict)
    #: open_data: publisher, license, base_url, contact of the open-data package (all optional)
    open_data: dict[str, str] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def source(self, key: str) -> Source:
        for s in self.sources:
            if s.key == key:
                return s
        raise KeyError(key)

    def lake_path(self, *parts: str) -> str:
        """A path (or URI) under the lake root."""
        return "/".join([self.lake_root.rstrip("/"), *parts])

    @property
    def is_remote(self) -> bool:
        return "://" in self.lake_root


def resolve_path(base: Path, value: str) -> str:
    if "://" in value:
        return value
    return str((base / os.path.expanduser(value)).resolve())


def _require(d: dict, key: str, where: str, hint: str) -> Any:
    if key not in d or d[key] in (None, ""):
        raise ConfigError(f"{where}.{key} is missing: {hint}")
    return d[key]


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping (key: value lines), got {type(value).__name__}")
    return value


def _check_timezone(tz: Any, where: str) -> str:
    if not isinstance(tz, str):
        raise ConfigError(f"{where}: an IANA time zone name like America/Chicago, got {_shown(tz)}")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"{where}: {tz!r} is not an IANA time zone; use a name like America/Chicago") from None
    return tz


# --- hostile-input limits and rules (docs/cities.md "What city.yaml may contain") ---------------------

#: a city.yaml is a few kilobytes: a bigger file, a deeper nesting or anchors/aliases expanding past the
#: node budget (a "billion laughs" bomb) are refused before any value is built
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000
#: a source column named in city.yaml (primary_key, cursor, freshness.column) goes into SQL as a quoted
#: identifier, and into dbt models, so it may hold anything but these
_COLUMN_NAME = re.compile(r'[^"`\x00-\x1f\x7f]{1,256}')
_TEMPLATE = ("{{", "{%", "{#")
COLUMN_RULE = "a column name: 1 to 256 characters without double quotes, backticks, control characters, {{ or {%"
#: `table:` of a SQL source: [catalog.][schema.]table, each part letters, digits, _, $, - or spaces
_TABLE = re.compile(r"[\w $-]{1,128}(?:\.[\w $-]{1,128}){0,2}")
_WILDCARD = re.compile(r"[*?\[]")
#: optional text keys of a source: their type is the model's (city_schema), here they may not hold NUL
_TEXT_KEYS = ("dsn", "url", "topic", "client_id", "records_path", "sheet", "landing")
#: the only URL schemes an http_json source is read over (urllib would open file:// and ftp:// too)
HTTP_SCHEMES = ("http", "https")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def valid_name(name: str) -> bool:
    """An agency, source or sink name (see NAME_RULE)."""
    return bool(_NAME.fullmatch(name)) and "__" not in name


def _text(value: Any, where: str, hint: str, scalars: bool = False) -> str:
    """A string-valued key (with `scalars`, a number or date is taken as its text); never a list or mapping."""
    if isinstance(value, str):
        text = value
    elif scalars and isinstance(value, (int, float, date)) and not isinstance(value, bool):
        text = str(value)
    else:
        raise ConfigError(f"{where}: {hint}; got {_shown(value)}")
    if "\x00" in text:
        raise ConfigError(f"{where}: holds a NUL character; {hint}")
    return text


def _number(value: Any, where: str, low: float, high: float, integer: bool = False) -> float:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "a whole number" if integer else "a number"
        span = f"{low:_} to {high:_}".replace("_", " ")
        raise ConfigError(f"{where}: {what} from {span}, got {_shown(value)}")
    return value


def _path(base: Path, value: Any, where: str, hint: str) -> str:
    """A path-valued key resolved against the config's folder; a value no filesystem takes is refused."""
    text = _text(value, where, hint)
    try:
        return resolve_path(base, text)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"{where}: {text[:200]!r} is not a usable path ({exc}); {hint}") from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def column_name(value: Any, where: str) -> str:
    """A source column named in city.yaml, safe to quote into SQL and dbt models."""
    if not isinstance(value, str) or not _COLUMN_NAME.fullmatch(value) or any(t in value for t in _TEMPLATE):
        raise ConfigError(f"{where}: {COLUMN_RULE}; got {_shown(value)}")
    return value


def glob_base(pattern: str) -> str:
    """The folder a glob names: its segments before the first wildcard (a plain file path: its folder)."""
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if _WILDCARD.search(part):
            break
        fixed.append(part)
    return "/".join(fixed) or "/"


def _check_glob(pattern: str, where: str) -> None:
    """A files glob may not climb out of the folder it names: no '..' at or after its first wildcard."""
    parts = pattern.replace("\\", "/").split("/")
    first = next((i for i, p in enumerate(parts) if _WILDCARD.search(p)), len(parts))
    if ".." in parts[first:]:
        raise ConfigError(
            f"{where}: '..' after a wildcard lets the glob reach outside the folder it names; "
            "name the folder before the first wildcard, e.g. path: ./landing/energy/*.csv"
        )


def _check_expression(value: Any, where: str) -> str:
    """A `columns:`/`district:` value: a source column name or one scalar SQL expression (dbt_build)."""
    text = _text(value, where, "a source column or a SQL expression over the source's columns", scalars=True)
    from orchestration.dbt_build import expression_problem  # late: dbt_build imports this module

    problem = expression_problem(text)
    if problem:
        raise ConfigError(f"{where}: {text[:200]!r} {problem}")
    return text


def _check_query(value: Any, where: str, kind: str) -> str:
    """`query:` runs on the agency's database: one SELECT, parsed in the source kind's dialect (sql_rules)."""
    text = _text(value, where, 'a select statement, e.g. query: "select * from rides"')
    if kind not in DIALECTS:
        raise ConfigError(f"{where}: only postgres, mysql and sqlite sources take a query; this one is kind {kind}")
    problem = query_problem(text, kind)
    if problem:
        raise ConfigError(f"{where}: {problem}; got {text[:200]!r}")
    return text


def _check_schedule(value: Any, where: str) -> str:
    text = _text(value, where, 'a cron string, e.g. schedule: "0 3 * * *"')
    from dagster._utils.schedules import is_valid_cron_string  # late: dagster is slow to import

    try:
        valid = is_valid_cron_string(text)
    except Exception:  # noqa: BLE001 - the parser's own error on a hostile string means the same: not cron
        valid = False
    if not valid:
        raise ConfigError(f'{where}: {text[:80]!r} is not a cron string; e.g. schedule: "0 3 * * *" (03:00 daily)')
    return text


def _check_source_values(raw: dict, where: str, kind: str) -> None:
    """What the model's types cannot say about a source's optional keys (their types and ranges are the
    model's, city_schema), so a wrong value fails here rather than mid-run."""
    for key in _TEXT_KEYS:
        if key in raw:
            _text(raw[key], f"{where}.{key}", "text")
    if "delimiter" in raw:
        d = raw["delimiter"]
        if not isinstance(d, str) or len(d) != 1 or d in '"\r\n':
            raise ConfigError(f"{where}.delimiter: one character, e.g. delimiter: ';', got {_shown(d)}")
    if "encoding" in raw:
        enc = _text(raw["encoding"], f"{where}.encoding", "a text encoding, e.g. encoding: latin-1")
        try:
            info = codecs.lookup(enc)
            if not getattr(info, "_is_text_encoding", True) or info.name == "undefined":
                raise LookupError(enc)
        except (LookupError, ValueError):
            raise ConfigError(
                f"{where}.encoding: {enc[:80]!r} is not a text encoding; e.g. utf-8, latin-1, cp1252"
            ) from None
    if "table" in raw and not (isinstance(raw["table"], str) and _TABLE.fullmatch(raw["table"])):
        raise ConfigError(
            f"{where}.table: [schema.]table, each part letters, digits, _, $, - or spaces (write anything else "
            f"as query:), got {_shown(raw['table'])}"
        )
    if "query" in raw:
        _check_query(raw["query"], f"{where}.query", kind)
    if "schedule" in raw:
        _check_schedule(raw["schedule"], f"{where}.schedule")
    cursor = raw.get("cursor")
    if isinstance(cursor, dict):
        column_name(cursor.get("field"), f"{where}.cursor.field")
        _text(cursor.get("param"), f"{where}.cursor.param", "the query parameter that takes the cursor")
    elif cursor is not None:
        column_name(cursor, f"{where}.cursor")
    headers = _mapping(raw.get("headers"), f"{where}.headers")
    for k, v in headers.items():
        _text(k, f"{where}.headers", "header names are text")
        _text(v, f"{where}.headers.{k}", "a header value (text or ${ENV_VAR})", scalars=True)
    paging = _mapping(raw.get("pagination"), f"{where}.pagination")
    for k, v in paging.items():
        if k in ("size", "start"):
            _number(v, f"{where}.pagination.{k}", 0, 1_000_000, integer=True)
        else:
            _text(v, f"{where}.pagination.{k}", "text")


def http_origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http or https URL, the default port filled in; None for any other URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # an unreadable port or IPv6 host
        return None
    scheme = parts.scheme.lower()
    if scheme not in HTTP_SCHEMES or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def _check_http_locations(raw: dict, where: str) -> None:
    """http_json: `url` is http(s) (a `${VAR}` scheme is checked once resolved, at run time) and each
    of `allowed_origins` is an origin, scheme://host[:port]."""
    url = _text(raw["url"], f"{where}.url", "the endpoint, e.g. url: https://api.example.org/requests.json")
    scheme = _SCHEME.match(url)
    http = bool(scheme) and scheme[1].lower() in HTTP_SCHEMES and url[scheme.end() :].startswith("//")
    if not (http or url.startswith("${")):
        got = f"scheme '{scheme[1][:20]}'" if scheme else "no scheme"
        raise ConfigError(f"{where}.url: citylake reads only http:// and https:// URLs; got {got}")
    origins = raw.get("allowed_origins", [])
    example = "e.g. allowed_origins: [https://cdn.example.org, http://10.0.0.5:8080]"
    if not isinstance(origins, list):
        raise ConfigError(f"{where}.allowed_origins: a list of origins, {example}; got {_shown(origins)}")
    for i, value in enumerate(origins):
        text = _text(value, f"{where}.allowed_origins[{i}]", f"an origin, {example}")
        parts = urllib.parse.urlsplit(text) if http_origin(text) else None
        if not parts or parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
            raise ConfigError(
                f"{where}.allowed_origins[{i}]: scheme://host[:port] with scheme http or https and no path, "
                f"{example}; got {text[:80]!r}"
            )


def _parse_source(agency: str, name: str, raw: Any, base: Path, city_tz: str) -> Source:
    where = f"agencies.{agency}.{name}"
    if not valid_name(name):
        raise ConfigError(f"{where}: a source name is {NAME_RULE}; got {name[:80]!r}")
    raw = _mapping(raw, where)
    kind = _require(raw, "kind", where, f"set it to one of {', '.join(SOURCE_KINDS)}")
    if not isinstance(kind, str) or kind not in SOURCE_KINDS:
        raise ConfigError(f"{where}.kind: {_shown(kind)} is not a source kind; use one of {', '.join(SOURCE_KINDS)}")
    pk = raw.get("primary_key")
    if isinstance(pk, str):
        pk = [pk]
    if not pk or not isinstance(pk, list):
        raise ConfigError(
            f"{where}.primary_key is missing: list the source columns that identify a record, "
            "e.g. primary_key: [stop_id, service_date]"
        )
    pk = [column_name(c, f"{where}.primary_key") for c in pk]
    if kind in ("postgres", "mysql"):
        _require(raw, "dsn", where, "the connection string, e.g. dsn: ${TRANSPORT_DB_DSN}")
    if kind == "sqlite":
        _path(
            base,
            _require(raw, "path", where, "the SQLite database file, e.g. path: ./data/transport.sqlite"),
            f"{where}.path",
            "the SQLite database file",
        )
    if kind in ("postgres", "mysql", "sqlite") and not (raw.get("table") or raw.get("query")):
        raise ConfigError(f'{where}: set table: (e.g. public.daily_ridership) or query: "select ..."')
    if kind == "http_json":
        _require(raw, "url", where, "the endpoint, e.g. url: http://127.0.0.1:8311/open311/v2/requests.json")
        _check_http_locations(raw, where)
    if kind == "files":
        pattern = _require(raw, "path", where, "a file glob, e.g. path: ./landing/energy/*.csv")
        _check_glob(_text(pattern, f"{where}.path", "a file glob, e.g. path: ./landing/energy/*.csv"), f"{where}.path")
        _path(base, pattern, f"{where}.path", "a file glob, e.g. path: ./landing/energy/*.csv")
        fmt = _require(raw, "format", where, f"one of {', '.join(FILE_FORMATS)}")
        if not isinstance(fmt, str) or fmt not in FILE_FORMATS:
            raise ConfigError(f"{where}.format: {_shown(fmt)} is not supported; use one of {', '.join(FILE_FORMATS)}")
    if kind == "mqtt":
        _require(raw, "topic", where, "the topic filter, e.g. topic: city/air/+")
        if "landing" in raw:
            _path(base, raw["landing"], f"{where}.landing", "the folder for MQTT batch files")
    _check_source_values(raw, where, kind)
    tz = _check_timezone(raw.get("timezone", city_tz), f"{where}.timezone")

    feeds = raw.get("feeds")
    columns = {
        _text(k, f"{where}.columns", "keys are conformed column names"): _check_expression(v, f"{where}.columns.{k}")
        for k, v in _mapping(raw.get("columns"), f"{where}.columns").items()
    }
    district = {
        str(k): _text(v, f"{where}.district.{k}", "a source column or a SQL expression", scalars=True)
        for k, v in _mapping(raw.get("district"), f"{where}.district").items()
    }
    units = {
        _text(k, f"{where}.units", "keys are quantities, e.g. no2"): _text(v, f"{where}.units.{k}", "a unit, e.g. ppb")
        for k, v in _mapping(raw.get("units"), f"{where}.units").items()
    }
    if feeds is not None:
        if not isinstance(feeds, str) or feeds not in ENTITIES:
            raise ConfigError(
                f"{where}.feeds: {_shown(feeds)} is not a conformed entity; use one of {', '.join(ENTITIES)}"
            )
        entity = ENTITIES[feeds]
        for col in columns:
            if entity.column(col) is None:
                names = ", ".join(c.name for c in entity.columns)
                raise ConfigError(f"{where}.columns.{col}: {feeds} has no column '{col}'; its columns are {names}")
        missing = [c for c in entity.required if c not in columns]
        if missing:
            raise ConfigError(
                f"{where}.columns: {feeds} needs {', '.join(missing)}; map each to a source column or a SQL expression"
            )
    elif columns:
        raise ConfigError(f"{where}.columns is set but feeds: is not; name the entity the columns fill")
    if district:
        method = district.get("from")
        if method not in DISTRICT_METHODS:
            raise ConfigError(f"{where}.district.from: use one of {', '.join(DISTRICT_METHODS)}, got {method!r}")
        needs = ("lat", "lon") if method == "coordinates" else ("column",)
        for k in needs:
            if not district.get(k):
                raise ConfigError(f"{where}.district.{k} is missing: name the source column (from: {method})")
            _check_expression(district[k], f"{where}.district.{k}")
    fresh = _mapping(raw.get("freshness"), f"{where}.freshness")
    if fresh:
        delay = fresh.get("max_delay_hours")
        if not fresh.get("column") or isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise ConfigError(
                f"{where}.freshness: give the timestamp column and the allowed delay, e.g. "
                "freshness: {column: observed_at, max_delay_hours: 26}"
            )
        column_name(fresh["column"], f"{where}.freshness.column")
        _number(delay, f"{where}.freshness.max_delay_hours", 0.001, 87_840)
    drop = _mapping(raw.get("volume"), f"{where}.volume").get(
        "max_drop", city_schema.default(city_schema.Volume, "max_drop")
    )
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop <= 1:
        raise ConfigError(f"{where}.volume.max_drop: a share between 0 and 1 (e.g. 0.5), got {_shown(drop)}")
    personal = _parse_personal_data(raw.get("personal_data"), where, pk, raw, columns, district)
    from orchestration.dbt_build import unit_factors  # late: the seed reader lives with the dbt build

    for quantity, unit in units.items():
        if (quantity, unit) not in unit_factors():
            raise ConfigError(
                f"{where}.units.{quantity}: no conversion from '{unit}' to the conformed unit; "
                "add a row to dbt_project/seeds/unit_conversions.csv"
            )
    return Source(
        agency=agency,
        name=name,
        kind=kind,
        raw=raw,
        base_dir=base,
        primary_key=tuple(pk),
        timezone=tz,
        feeds=feeds,
        columns=columns,
        district=district,
        units=units,
        schedule=raw.get("schedule"),
        personal_data=personal,
    )


def _parse_personal_data(
    value: Any, where: str, pk: list[str], raw: dict, columns: dict[str, str], district: dict[str, str]
) -> dict[str, tuple[str, ...]]:
    """`personal_data: {drop: [...], hash: [...]}`: column names (or dotted paths into JSON columns)."""
    where = f"{where}.personal_data"
    example = "e.g. personal_data: {drop: [first_name, phone], hash: [email]}"
    given = _mapping(value, where)
    unknown = sorted(set(given) - set(PERSONAL_DATA_ACTIONS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; use drop and hash, {example}")
    out: dict[str, tuple[str, ...]] = {}
    for action in PERSONAL_DATA_ACTIONS:
        names = given.get(action) or []
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise ConfigError(f"{where}.{action}: a list of source column names, {example}")
        out[action] = tuple(dict.fromkeys(names))
    both = sorted(set(out["drop"]) & set(out["hash"]))
    if both:
        raise ConfigError(f"{where}: '{both[0]}' is listed under both drop and hash; keep it in one")
    cursor = raw.get("cursor")
    cursor = cursor.get("field") if isinstance(cursor, dict) else cursor
    for name in out["drop"]:
        if name in pk:
            raise ConfigError(f"{where}.drop: '{name}' is part of primary_key; hash it instead (hash: [{name}])")
    for name in (*out["drop"], *out["hash"]):
        if cursor and name == cursor:
            raise ConfigError(f"{where}: '{name}' is the cursor column, which must stay readable; remove it here")
    used = {f"columns.{k}": v for k, v in columns.items()}
    used.update({f"district.{k}": v for k, v in district.items() if k != "from"})
    for key, mapped in used.items():
        if mapped in out["drop"] or mapped.strip('"') in out["drop"]:
            raise ConfigError(
                f"{where}.drop: '{mapped.strip(chr(34))}' is dropped but {key} reads it; map another column "
                "or hash it instead"
            )
    return out


def _parse_population_format(value: Any) -> dict[str, str]:
    """`districts.population_format`: a census table published wide (one column per census year) or long
    under its own column names -> code, population, year."""
    where = "districts.population_format"
    fmt = {
        _text(k, where, "keys are layout, code and year_columns (wide) or code, population and year (long)"): _text(
            v, f"{where}.{k}", "text", scalars=True
        )
        for k, v in _mapping(value, where).items()
    }
    if not fmt:
        return {}
    example = "e.g. population_format: {layout: wide, code: district_code, year_columns: '^(\\d{4}) Population$'}"
    long_example = "e.g. population_format: {layout: long, code: ward_no, population: residents, year: census}"
    if fmt.get("layout") == "long":
        unknown = sorted(set(fmt) - {"layout", *LONG_POPULATION})
        if unknown:
            raise ConfigError(
                f"{where}.{unknown[0][:80]}: unknown key for layout long; use code, population and year; {long_example}"
            )
        for key, column in LONG_POPULATION.items():
            fmt.setdefault(key, column)
            _check_expression(fmt[key], f"{where}.{key}")
        return fmt
    if fmt.get("layout") != "wide":
        raise ConfigError(f"{where}.layout: use wide (one column per census year) or long; {example}")
    unknown = sorted(set(fmt) - {"layout", "code", "year_columns"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0][:80]}: unknown key; use layout, code and year_columns; {example}")
    _require(fmt, "code", where, f"the column (or SQL expression over the columns) giving the district code; {example}")
    _check_expression(fmt["code"], f"{where}.code")
    pattern = _require(fmt, "year_columns", where, f"a regex matching the census-year columns; {example}")
    try:
        groups = re.compile(pattern).groups
    except (re.error, RecursionError, OverflowError) as exc:
        raise ConfigError(
            f"{where}.year_columns: {pattern[:200]!r} is not a regular expression ({exc}); {example}"
        ) from None
    if groups < 1:
        raise ConfigError(f"{where}.year_columns: {pattern[:200]!r} needs a group capturing the year, {example}")
    return fmt


#: `population_format: {layout: long}`: its keys and the column each defaults to
LONG_POPULATION = {"code": "code", "population": "population", "year": "year"}


SINK_KINDS = ("postgres",)


def _parse_sinks(value: Any) -> dict[str, dict[str, Any]]:
    """`sinks:`: where published marts are copied besides the catalog (see the module docstring)."""
    sinks = {}
    for kind, given in _mapping(value, "sinks").items():
        where = f"sinks.{str(kind)[:80]}"
        if kind not in SINK_KINDS:
            raise ConfigError(f"{where}: unknown sink; use one of {', '.join(SINK_KINDS)}")
        raw = dict(_mapping(given, where))
        _text(
            _require(raw, "dsn", where, "the connection string, e.g. dsn: ${CITYLAKE_PG_DSN}"), f"{where}.dsn", "text"
        )
        raw.setdefault("schema", city_schema.default(city_schema.PostgresSink, "schema"))
        for key in ("schema", "reader_role"):
            if key in raw and not (isinstance(raw[key], str) and valid_name(raw[key])):
                raise ConfigError(f"{where}.{key}: a PostgreSQL name, {NAME_RULE}; got {_shown(raw[key])}")
        unknown = sorted(str(k) for k in set(raw) - {"dsn", "schema", "reader_role"})
        if unknown:
            raise ConfigError(
                f"{where}.{unknown[0][:80]}: unknown key; a postgres sink takes dsn, schema and reader_role"
            )
        sinks[kind] = raw
    return sinks


def _parse_alerts(value: Any) -> dict[str, Any]:
    alerts = dict(_mapping(value, "alerts"))
    unknown = sorted(str(k) for k in set(alerts) - {"webhook"})
    if unknown:
        raise ConfigError(f"alerts.{unknown[0][:80]}: unknown key; alerts takes webhook: URL")
    url = _text(alerts.get("webhook", ""), "alerts.webhook", "an http(s) URL or ${ENV_VAR}")
    if url and not (url.startswith(("http://", "https://")) or url.startswith("${")):
        raise ConfigError(f"alerts.webhook: an http(s) URL or ${{ENV_VAR}}, got {url[:200]!r}")
    return alerts


def _parse_partitions(value: Any) -> dt.date:
    d = _mapping(value, "partitions")
    unknown = set(d) - {"start"}
    if unknown:
        raise ConfigError(f"partitions.{sorted(unknown, key=str)[0]}: unknown key; the only key is start")
    start = d.get("start", city_schema.default(city_schema.Partitions, "start"))
    if isinstance(start, dt.datetime):
        start = start.date()
    if not isinstance(start, dt.date):
        try:
            start = dt.date.fromisoformat(str(start))
        except ValueError:
            raise ConfigError(f"partitions.start: '{start}' is not a date; write e.g. start: 2025-01-01") from None
    if start > dt.date.today():
        raise ConfigError(f"partitions.start: {start} is in the future; use the day day-by-day operation starts")
    return start


def _parse_deduplicate(value: Any, sources: list[Source]) -> dict[str, Deduplicate]:
    """`deduplicate:` (see the module docstring): every entity, column and source named must exist and fit."""
    rules = {}
    example = "e.g. road_collisions: {match: [accident_at, latitude, longitude], prefer: [safety/collisions]}"
    for entity_name, given in _mapping(value, "deduplicate").items():
        where = f"deduplicate.{entity_name}"
        if entity_name not in ENTITIES:
            raise ConfigError(f"{where}: '{entity_name}' is not a conformed entity; use one of {', '.join(ENTITIES)}")
        entity = ENTITIES[entity_name]
        rule = _mapping(given, where)
        unknown = sorted(set(rule) - {"match", "prefer"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; a rule takes match and prefer; {example}")
        match = rule.get("match")
        if not match or not isinstance(match, list):
            raise ConfigError(
                f"{where}.match is missing: list the conformed columns whose equal values mean the same "
                f"real-world record; {example}"
            )
        feeding = [s for s in sources if s.feeds == entity_name]
        for col in match:
            if entity.column(str(col)) is None:
                names = ", ".join(c.name for c in entity.columns)
                raise ConfigError(f"{where}.match: {entity_name} has no column '{col}'; its columns are {names}")
            unmapped = [s.where for s in feeding if col not in s.columns]
            if unmapped:
                raise ConfigError(
                    f"{where}.match: {', '.join(unmapped)} does not map '{col}', so its records could never "
                    f"match; map it in that source's columns: or leave '{col}' out of match"
                )
        prefer = rule.get("prefer") or []
        if not isinstance(prefer, list):
            raise ConfigError(f"{where}.prefer: a list of agency/source names, first kept; {example}")
        by_key = {s.key: s for s in sources}
        for key in prefer:
            feeds = ", ".join(s.key for s in feeding) or "none"
            if key not in by_key:
                raise ConfigError(
                    f"{where}.prefer: '{key}' is not a source in agencies (write agency/source); "
                    f"the sources feeding {entity_name} are {feeds}"
                )
            if by_key[key].feeds != entity_name:
                raise ConfigError(
                    f"{where}.prefer: {key} feeds {by_key[key].feeds or 'no entity'}, not {entity_name}; "
                    f"the sources feeding {entity_name} are {feeds}"
                )
        if len(set(prefer)) != len(prefer):
            raise ConfigError(f"{where}.prefer: a source is listed twice; list each once, first kept")
        rules[entity_name] = Deduplicate(entity_name, tuple(str(c) for c in match), tuple(prefer))
    return rules


def _parse_simulators(value: Any) -> dict[str, Any]:
    sims = _mapping(value, "simulators")
    open311 = _mapping(sims.get("open311"), "simulators.open311")
    if open311:
        _text(_require(open311, "data", "simulators.open311", "the requests file"), "simulators.open311.data", "a path")
        if "port" in open311:
            _number(open311["port"], "simulators.open311.port", 1, 65535, integer=True)
    return sims


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader; `read_yaml` checks the composed document before any value is built."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as exc:
            # a date like 2025-13-45, an integer of more digits than Python converts, ...
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {exc}", node.start_mark
            ) from None


def _line(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


def _check_document(root: yaml.Node, where: str) -> None:
    """Refuse a document too deep, too big once aliases are expanded, self-referencing, or with a key twice."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: {_line(node)}: nested deeper than {MAX_DEPTH} levels; a city.yaml needs a few")
        if id(node) in open_nodes:
            raise ConfigError(f"{where}: {_line(node)}: an alias refers to a node that contains it")
        n = 1
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            open_nodes.add(id(node))
            if isinstance(node, yaml.MappingNode):
                children = [c for pair in node.value for c in pair]
                seen: dict[tuple[str, str], yaml.Node] = {}
                for key, _ in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                        if (key.tag, key.value) in seen:
                            raise ConfigError(
                                f"{where}: {_line(key)}: key {key.value[:80]!r} appears twice in one mapping "
                                f"(first on {_line(seen[key.tag, key.value])}); YAML keeps only the last, so remove one"
                            )
                        seen[key.tag, key.value] = key
            else:
                children = node.value
            for child in children:
                n += size(child, depth + 1)
                if n > MAX_NODES:
                    raise ConfigError(
                        f"{where}: {_line(node)}: more than {MAX_NODES} values once anchors and aliases are "
                        "expanded (an alias bomb?); a city.yaml needs a few hundred"
                    )
            open_nodes.discard(id(node))
        sizes[id(node)] = n
        return n

    size(root, 0)


def read_yaml(p: Path) -> Any:
    """The YAML document in `p`, built only once it is known to be small (see MAX_CONFIG_BYTES, MAX_DEPTH,
    MAX_NODES) and without a repeated key; any problem is a ConfigError naming the file and line."""
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: {len(raw)} bytes; a city.yaml is at most {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}: line {line}: not UTF-8 text (byte {raw[exc.start]:#04x}); save it as UTF-8") from None
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{p}: nested deeper than {MAX_DEPTH} levels; a city.yaml needs a few") from None
        if node is None:
            return None
        _check_document(node, str(p))
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def load_config(path: str | os.PathLike | None = None) -> CityConfig:
    """Read and validate city.yaml; raises ConfigError naming the key and the fix."""
    p = config_path(path)
    if not _exists(p):
        raise ConfigError(
            f"{p}: no such config file; pass --config PATH, set CITYLAKE_CONFIG, "
            "or run `citylake generate` to create the reference city"
        )
    data = _mapping(read_yaml(p), str(p))
    # the model first: an unknown key or a value of the wrong type is refused before anything is read
    refused, left = city_schema.problems(data)
    if refused:
        raise ConfigError(refused[0])
    base = p.parent
    city = _mapping(_require(data, "city", "city.yaml", "add a city: block with name and timezone"), "city")
    name = _text(
        _require(city, "name", "city", "the city's name, e.g. name: Riverton"), "city.name", "the city's name", True
    )
    if any(t in name for t in _TEMPLATE):
        raise ConfigError(f"city.name: {name[:80]!r} holds a template delimiter ({{{{ or {{%); write the plain name")
    tz = _check_timezone(
        _require(city, "timezone", "city", "an IANA zone, e.g. timezone: America/Chicago"), "city.timezone"
    )
    lake = _mapping(_require(data, "lake", "city.yaml", "add lake: {root: ./lake}"), "lake")
    root = _path(base, _require(lake, "root", "lake", "a folder or s3://bucket/prefix"), "lake.root", "a folder")
    if "catalog" in data:
        catalog = Path(_path(base, data["catalog"], "catalog", "a local DuckDB file, e.g. catalog: ./catalog.duckdb"))
    elif "://" in root:
        raise ConfigError(
            "catalog is missing: the lake is on object storage, so name a local file for the "
            "analyst catalog, e.g. catalog: ./catalog.duckdb"
        )
    else:
        catalog = Path(root) / "catalog.duckdb"
    state_dir = Path(
        _path(
            base,
            data.get("state_dir", city_schema.default(city_schema.CityFile, "state_dir")),
            "state_dir",
            "a local folder",
        )
    )
    districts = _mapping(
        _require(data, "districts", "city.yaml", "add districts: {boundaries, population}"), "districts"
    )
    boundaries = Path(
        _path(
            base,
            _require(districts, "boundaries", "districts", "a GeoJSON file, one feature per district"),
            "districts.boundaries",
            "a GeoJSON file",
        )
    )
    population = Path(
        _path(
            base,
            _require(districts, "population", "districts", "a CSV with columns code, population, year"),
            "districts.population",
            "a CSV file",
        )
    )
    for key, f in (("districts.boundaries", boundaries), ("districts.population", population)):
        if not _exists(f):
            raise ConfigError(f"{key}: {f} does not exist; fix the path (relative to {base})")
    code_property, name_property = (
        _text(
            districts.get(key, city_schema.default(city_schema.Districts, key)),
            f"districts.{key}",
            "a property name",
            True,
        )
        for key in ("code_property", "name_property")
    )
    refs = {}
    for key, value in _mapping(data.get("reference_data"), "reference_data").items():
        if key not in ("district_crosswalk", "service_categories", "waste_streams"):
            raise ConfigError(
                f"reference_data.{str(key)[:80]}: unknown; use district_crosswalk, service_categories or waste_streams"
            )
        refs[key] = Path(_path(base, value, f"reference_data.{key}", "a CSV file"))
        if not _exists(refs[key]):
            raise ConfigError(f"reference_data.{key}: {refs[key]} does not exist; fix the path")
    sources = []
    for agency, srcs in _mapping(data.get("agencies"), "agencies").items():
        if not valid_name(str(agency)):
            raise ConfigError(f"agencies: an agency name is {NAME_RULE}; got {_shown(agency)}")
        for sname, raw in _mapping(srcs, f"agencies.{agency}").items():
            sources.append(_parse_source(str(agency), str(sname), raw, base, tz))
    if not sources:
        raise ConfigError("agencies: no sources declared; add at least one agency source")
    cfg = CityConfig(
        path=p,
        name=name,
        timezone=tz,
        lake_root=root,
        catalog_path=catalog,
        state_dir=state_dir,
        boundaries=boundaries,
        code_property=code_property,
        name_property=name_property,
        population=population,
        reference_data=refs,
        simulators=_parse_simulators(data.get("simulators")),
        sources=tuple(sources),
        sinks=_parse_sinks(data.get("sinks")),
        population_format=_parse_population_format(districts.get("population_format")),
        alerts=_parse_alerts(data.get("alerts")),
        partitions_start=None if data.get("partitions") is None else _parse_partitions(data.get("partitions")),
        deduplicate=_parse_deduplicate(data.get("deduplicate"), sources),
        open_data={k: str(v) for k, v in _mapping(data.get("open_data"), "open_data").items()},
    )
    if left:
        # what the model refuses that the checks above let through (they name better fixes, so go first)
        raise ConfigError(left[0])
    return cfg
