"""Readers for each source kind. Each yields `Landing`s: rows as read plus the rows it could not read.

A connector only reads; what lands in bronze, what goes to quarantine and when a cursor moves is
decided once, in `orchestration.ingest`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from orchestration.config import PII_KEY_ENV, Source

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
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            # a JSON number is a number: 101 and 101.0 are one value (one key, one station)
            return str(int(v))
        return str(v)

    return pa.table({n: pa.array([text(r.get(n)) for r in records], pa.string()) for n in names})


def read_source(
    source: Source, cursor: Any | None, loaded_files: set[tuple[str, str]], memo: Any = None
) -> Iterator[Landing]:
    """Read a source past `cursor` (None: from the start), in bounded batches; files skip `loaded_files`
    (`memo`: a files.ChecksumMemo, the checksums of files read before)."""
    if source.kind in ("postgres", "mysql", "sqlite"):
        from orchestration.connectors.sql import read_sql

        yield from read_sql(source, cursor)
    elif source.kind == "http_json":
        from orchestration.connectors.http_json import read_http_json

        yield from read_http_json(source, cursor)
    elif source.kind == "files":
        from orchestration.connectors.files import read_files

        yield from read_files(source, loaded_files, memo)
    elif source.kind == "mqtt":
        from orchestration.connectors.mqtt import read_mqtt_batches

        yield from read_mqtt_batches(source)
    else:
        raise ValueError(f"{source.where}.kind: '{source.kind}' has no connector")


def _close(iterator: Iterator) -> None:
    close = getattr(iterator, "close", None)  # a generator's: its files and connections are let go now
    if close is not None:
        close()


#: CITYLAKE_READ_AHEAD=0 reads a source on the loading thread itself (see `read_ahead`)
READ_AHEAD_ENV = "CITYLAKE_READ_AHEAD"


def read_ahead(landings: Iterator[Landing], depth: int = 2) -> Iterator[Landing]:
    """`landings` as they come, read on a thread of their own while the caller checks and commits the
    ones before: the next file is listed, checksummed and parsed (each piece of a file up to `depth`
    pieces ahead), the next page or batch fetched, on the other core.

    Nothing else changes: the landings, their pieces and whatever reading them raises (a file refused
    part way, a file that changed, a source that cannot be listed) reach the caller in the same order,
    each where reading it raised, so the caller decides and commits exactly as it would reading them
    itself. The reader stops when the caller stops taking (an error, a failed commit): what it read
    ahead is dropped, never committed. Memory: at most `depth` pieces (or landings) wait, and one is read.
    CITYLAKE_READ_AHEAD=0 turns it off."""
    import os
    import queue
    import threading

    if os.environ.get(READ_AHEAD_ENV, "1") == "0":
        yield from landings
        return
    # what the reader hands over, in order; a piece or a landing first takes one of `depth` slots (the
    # markers around a file's pieces take none, so that the reader parses the next piece while they wait)
    items: queue.SimpleQueue = queue.SimpleQueue()
    slots = threading.Semaphore(depth)
    stop = threading.Event()
    DATA = ("landing", "piece")

    def put(kind: str, item: Any = None) -> bool:
        if kind in DATA:
            while not slots.acquire(timeout=0.05):
                if stop.is_set():
                    return False
        if stop.is_set():
            return False
        items.put((kind, item))
        return True

    def take() -> tuple[str, Any]:
        kind, item = items.get()
        if kind in DATA:
            slots.release()
        return kind, item

    def reader() -> None:
        try:
            for landing in landings:
                if landing.pieces is None:
                    if not put("landing", landing):
                        return
                    continue
                pieces, landing.pieces = landing.pieces(), None
                if not put("file", landing):
                    return
                try:
                    for piece in pieces:
                        if not put("piece", piece):
                            return
                except BaseException as exc:  # noqa: BLE001 - raised where the caller reads this file's pieces
                    if not put("raised", exc):
                        return
                    continue
                finally:
                    _close(pieces)
                if not put("end"):
                    return
        except BaseException as exc:  # noqa: BLE001 - raised where the caller asks for the next landing
            put("failed", exc)
            return
        finally:
            _close(landings)
        put("done")

    def file_pieces() -> Iterator[tuple[pa.Table, list[Rejected]]]:
        while True:
            kind, item = take()
            if kind == "end":
                return
            if kind == "raised":
                raise item
            if kind == "closed":
                raise RuntimeError("read_ahead: the stream was closed while a file's pieces were still being taken")
            yield item

    thread = threading.Thread(target=reader, name="citylake-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = take()
            if kind == "done":
                return
            if kind == "failed":
                raise item
            if kind in ("piece", "end", "raised"):
                continue  # the rest of a file whose pieces the caller did not take to the end
            if kind == "file":
                item.pieces = file_pieces
            yield item
    finally:
        stop.set()
        thread.join()
        items.put(("closed", None))  # a file's pieces taken after this raise instead of waiting forever


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: what ends a password inside a URL or a conninfo string: a driver that misparses a password holding one of
#: these quotes the rest of it (libpq reports host 'ss-x@h' for postgresql://u:p@ss-x@h/db), so those pieces
#: (6 characters or more) are secrets too
_DELIMITERS = re.compile(r"[@:/?#%&=;,\s'\"]+")
_CONNINFO_PASSWORD = re.compile(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _pieces(secret: str) -> set[str]:
    return {secret, *(p for p in _DELIMITERS.split(secret) if len(p) >= 6)}


def _passwords(resolved: str) -> set[str]:
    """The passwords in a resolved URL or `key=value` conninfo string, raw and unquoted, with their pieces."""
    from urllib.parse import unquote, urlparse

    try:
        password = urlparse(resolved).password
    except ValueError:
        password = None
    found = {password, unquote(password)} if password else set()
    found |= {m.strip("'") for m in _CONNINFO_PASSWORD.findall(resolved)}
    return {piece for pw in found for piece in _pieces(pw)}


def config_secrets(raw: Any) -> set[str]:
    """Every resolvable secret of a block of city.yaml (a source, a sink, alerts): `${VAR}` values (and,
    for a bare value such as a password, its pieces), whole resolved strings, and the passwords of URLs
    and conninfo strings, so `redact` removes them however a driver quotes them in its messages."""
    import os

    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and "${" in value:
            names = _VAR.findall(value)
            if all(n in os.environ for n in names):
                resolved = _VAR.sub(lambda m: os.environ[m.group(1)], value)
                found.add(resolved)
                found.update(_passwords(resolved))
            for n in names:
                v = os.environ.get(n)
                if v:
                    # a whole DSN's pieces would be its host and database names: only its password counts
                    found.update({v} if "://" in v or "=" in v else _pieces(v))

    walk(raw)
    return found


def secret_values(source: Source) -> list[str]:
    """Every resolvable secret of the source (see `config_secrets`), longest first."""
    import os

    found = config_secrets(source.raw)
    if source.personal_data.get("hash") and os.environ.get(PII_KEY_ENV):
        found.add(os.environ[PII_KEY_ENV])  # the personal-data HMAC key is a secret too
    return sorted((v for v in found if len(v) >= 3), key=len, reverse=True)


def redact_values(text: str, values: set[str] | list[str]) -> str:
    """`text` with each of `values` (longest first) replaced by `<redacted>`."""
    for value in sorted((v for v in values if len(v) >= 3), key=len, reverse=True):
        text = text.replace(value, "<redacted>")
    return text


def redact(text: str, source: Source) -> str:
    """`text` with every secret of the source replaced by `<redacted>` (for messages and logs)."""
    return redact_values(text, secret_values(source))


def scrubbed(exc: BaseException, secrets: set[str] | list[str], where: str, error: type[Exception]) -> Exception | None:
    """`error` saying what `exc` says without its secrets, or None when neither it nor the exceptions it was
    raised from or during hold one. Raise the result `from None`: Dagster records the whole chain."""
    chain, seen = [], set()
    inner: BaseException | None = exc
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        chain.append(f"{inner!s} {inner!r}")
        inner = inner.__cause__ or inner.__context__
    text = "\n".join(chain)
    if redact_values(text, secrets) == text:
        return None
    return error(f"{where}: {type(exc).__name__}: {redact_values(str(exc), secrets)}")
