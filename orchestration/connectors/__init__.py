"""Readers for each source kind. Each yields `Landing`s: rows as read plus the rows it could not read.

A connector only reads; what lands in bronze, what goes to quarantine and when a cursor moves is
decided once, in `orchestration.ingest`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from orchestration.config import Source

#: a hidden column of file rows: where the row is in its file (path:N), for the location of a rejected
#: row; it never reaches bronze
LOCATION = "__citylake_location"


@dataclass
class Rejected:
    """A record that could not be read: the raw text or object, and why."""

    record: str
    reason: str
    location: str
    #: the record's primary key, when it could be read
    record_key: str | None = None


@dataclass
class Landing:
    """One unit of loading: a batch of a table, a page set of an API, or one whole file."""

    rows: pa.Table
    rejected: list[Rejected] = field(default_factory=list)
    #: for files: the file this landing replaces in bronze (path) and its checksum
    file: str | None = None
    checksum: str | None = None
    #: called once the landing's rows are committed to bronze (MQTT: move the batch file aside)
    after_commit: Callable[[], None] | None = None
    #: files: the file's rows in bounded pieces, each with the records it could not read (read lazily,
    #: once); `rows` is then empty
    pieces: Callable[[], Iterator[tuple[pa.Table, list[Rejected]]]] | None = None
    #: files: a fingerprint of how the source reads files (a file refused whole is retried when it changes)
    options: str | None = None


def text_table(records: list[dict[str, Any]], columns: Iterable[str] = ()) -> pa.Table:
    """Records as an all-text Arrow table: semi-structured files land as received, typed in staging.
    `columns` come first (all of them, even when no record has them), then any other key, as met."""
    import json

    names: dict[str, None] = dict.fromkeys(columns)
    for r in records:
        names.update(dict.fromkeys(r))

    def text(v: Any) -> str | None:
        if v is None:
            return None
        if isinstance(v, (dict, list)):
            return json.dumps(v, sort_keys=True)
        if isinstance(v, bool):
            return "true" if v else "false"
        if hasattr(v, "isoformat"):
            return v.isoformat()
        return str(v)

    return pa.table({n: pa.array([text(r.get(n)) for r in records], pa.string()) for n in names})


def read_source(source: Source, cursor: Any | None, loaded_files: set[tuple[str, str]]) -> Iterator[Landing]:
    """Read a source past `cursor` (None: from the start), in bounded batches; files skip `loaded_files`."""
    if source.kind in ("postgres", "mysql", "sqlite"):
        from orchestration.connectors.sql import read_sql

        yield from read_sql(source, cursor)
    elif source.kind == "http_json":
        from orchestration.connectors.http_json import read_http_json

        yield from read_http_json(source, cursor)
    elif source.kind == "files":
        from orchestration.connectors.files import read_files

        yield from read_files(source, loaded_files)
    elif source.kind == "mqtt":
        from orchestration.connectors.mqtt import read_mqtt_batches

        yield from read_mqtt_batches(source)
    else:
        raise ValueError(f"{source.where}.kind: '{source.kind}' has no connector")


def secret_values(source: Source) -> list[str]:
    """Every resolvable secret of the source, longest first: `${VAR}` values, whole resolved strings
    and a URL's password, so `redact` removes them however a driver quotes them in its messages."""
    import os
    import re
    from urllib.parse import unquote, urlparse

    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and "${" in value:
            names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value)
            if all(n in os.environ for n in names):
                resolved = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: os.environ[m.group(1)], value)
                found.add(resolved)
                try:
                    password = urlparse(resolved).password
                except ValueError:
                    password = None
                if password:
                    found.update({password, unquote(password)})
            found.update(os.environ[n] for n in names if n in os.environ)

    walk(source.raw)
    return sorted((v for v in found if len(v) >= 3), key=len, reverse=True)


def redact(text: str, source: Source) -> str:
    """`text` with every secret of the source replaced by `<redacted>` (for messages and logs)."""
    for value in secret_values(source):
        text = text.replace(value, "<redacted>")
    return text
