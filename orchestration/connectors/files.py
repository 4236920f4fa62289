"""File drops (CSV, XLSX, JSON, JSON lines, Parquet) from a folder glob: each file is loaded once.

A file is identified by its path and checksum: an unchanged file is skipped, a re-delivered file with
new content replaces its earlier rows in bronze. Rows that cannot be read (ragged CSV rows, lines that
are not JSON) are returned as rejected with the file and row or line, never dropped.

Source keys: path (a local glob, `**` recursing, or an `s3://bucket/prefix/*.csv` glob), format,
encoding (utf-8 by default; a BOM is accepted), delimiter (","), header (true), sheet (XLSX: default the
first), records_path (JSON: dotted path to the array), max_document_mb (JSON: 100). A file that cannot
be parsed at all is recorded in quarantine with its reason (the agency's drop folder is never modified);
it is tried again when its content or the source's reading options change.

Bounded memory: a file is read in pieces of PIECE_ROWS rows or PIECE_BYTES (CSV through pyarrow's streaming
reader, JSON lines by lines, Parquet by record batches, XLSX row by row), so a file of any size
loads in the same memory; ingest writes all pieces of a file as one Delta commit. A JSON document
(`format: json`, one array) is parsed whole, so it is refused above `max_document_mb`.

JSON lines, natively: a UTF-8 file (BOM and CRLF accepted) is read by pyarrow.json and every value
written as text in Arrow, with exactly the result of the Python reader (`_python_jsonl_pieces`: json.loads
line by line, then `text_table`), which stays the reference and the fallback. Lines shaped as one object
(`{` ... `}`) are read natively in runs; a run pyarrow refuses (a line that is not JSON, a column whose
type changes, a duplicate key, a number too large for a double) is split at the row its error names:
that line is read in Python, the lines around it natively again (a run of fewer than MIN_RUN lines in
Python). Read in Python, line by line, whatever pyarrow would give differently: blank or whitespace
lines, lines not shaped as an object, nested objects and arrays, NaN/Infinity, integral numbers of
2**53 or more (an integer beyond int64, or one in a column of floats, may have become a double); a run
with two objects on a line (rows would not match lines) or keys pyarrow tells apart differently, whole;
another encoding, the whole file; the rest of a piece once pyarrow has been handed NATIVE_BUDGET times
its lines (a file pyarrow keeps refusing costs about 1.2x the Python reader alone, at worst).
Strings stay strings: the first line's are read as strings and a column pyarrow took for timestamps is
read again as strings. Floats are written as Python writes them (pyarrow's text where it is the same,
repr elsewhere). A file of one piece is read as bytes; a bigger one is split into pieces as before and
each piece read natively. `JSONL_LINES` counts the lines each way took.

The folder a glob names (its part before the first wildcard) is where its files must be: a file
reached through a symlink that resolves outside that folder is refused with an error before anything
is loaded, and `**` does not descend into symlinked folders (no loops, no escape).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import fnmatch
import glob
import hashlib
import io
import json
import os
import re
import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestration.config import Source, glob_base
from orchestration.connectors import LOCATION, Landing, Rejected, text_table

#: a piece is at most this many rows or (CSV, JSON lines) about this many bytes: what a file's reader
#: hands ingest at once (ingest holds one piece, and its copies, in memory)
PIECE_ROWS = 200_000
PIECE_BYTES = 32 << 20
#: pyarrow's CSV block: a single CSV value (or a quote left open) may not exceed it
CSV_BLOCK = 1 << 20
#: a JSON line longer than this refuses its file; a rejected record keeps at most MAX_RECORD characters
MAX_LINE = 64 << 20
MAX_RECORD = 10_000
_CHUNK = 1 << 20
#: keys that decide how a file is read: a file refused whole is tried again when one of them changes
READ_KEYS = ("format", "encoding", "delimiter", "header", "sheet", "records_path", "primary_key", "max_document_mb")

Piece = tuple[pa.Table, list[Rejected]]


class UnreadableFile(Exception):
    """A file that cannot be read at all; the message is the reason recorded in quarantine."""


class FileChanged(Exception):
    """The file changed while it was read (still being written?): nothing of it is loaded this time."""


class OutsideFolder(ValueError):
    """A file the glob matched resolves (through a symlink) outside the folder the glob names."""


def s3_filesystem():
    """pyarrow's S3 filesystem: credentials from the AWS_* environment, AWS_ENDPOINT_URL for S3-compatibles."""
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        return fs.S3FileSystem(endpoint_override=host or scheme, scheme=scheme if host else "https")
    return fs.S3FileSystem()


def open_stream(path: str):
    """A binary stream over a local file or an s3:// object (read sequentially)."""
    if path.startswith("s3://"):
        return s3_filesystem().open_input_stream(path.removeprefix("s3://"))
    return open(path, "rb")


def _open_seekable(path: str):
    """A seekable binary file (Parquet footers, XLSX zip directories)."""
    if path.startswith("s3://"):
        return s3_filesystem().open_input_file(path.removeprefix("s3://"))
    return open(path, "rb")


def read_bytes(path: str) -> bytes:
    """The whole content of a local file or an s3:// object."""
    with open_stream(path) as f:
        return f.read()


def checksum(path: str) -> str:
    """sha256 of a file's content (its identity together with its path), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open_stream(path) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ChecksumMemo:
    """Checksums already computed, by local file and its identity stamp (size, mtime, ctime, inode), kept in
    a JSON file under the state dir: a run with nothing new does not read every file of a large drop
    folder again. A file whose content changes changes its ctime (which no copy tool can set back), so a
    stamp that matches means the same content; S3 objects are always read. Losing the file only costs
    the reading time; it is rewritten whole (atomically) and keeps only the files the glob still matches."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.known: dict[str, list[str]] = {}
        self.now: dict[str, list[str]] = {}
        if path is not None and path.exists():
            try:
                self.known = json.loads(path.read_text())
            except (OSError, ValueError):
                self.known = {}

    @staticmethod
    def identity(path: str) -> str | None:
        if path.startswith("s3://"):
            return None
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"

    def checksum(self, path: str) -> str:
        ident = self.identity(path)
        hit = self.known.get(path)
        digest = hit[1] if ident is not None and hit and hit[0] == ident else checksum(path)
        if ident is not None:
            self.now[path] = [ident, digest]
        return digest

    def save(self) -> None:
        if self.path is None or self.now == self.known:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.now))
        tmp.replace(self.path)


def _stamp(path: str) -> str:
    """size:mtime of one file (a change between the checksum and the end of the read means it changed)."""
    if path.startswith("s3://"):
        info = s3_filesystem().get_file_info(path.removeprefix("s3://"))
        return f"{info.size}:{info.mtime_ns}"
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def glob_files(pattern: str) -> list[str]:
    """Files matching a glob, sorted: a local pattern (`**` recurses) or an `s3://bucket/prefix/*.csv` one."""
    if not pattern.startswith("s3://"):
        return sorted(p for p in _local_glob(pattern) if Path(p).is_file())
    from pyarrow import fs

    bare = pattern.removeprefix("s3://")
    # list from the deepest folder without a wildcard, then match the full key against the pattern
    wild = min((bare.find(c) for c in "*?[" if c in bare), default=len(bare))
    base = bare[:wild].rsplit("/", 1)[0]
    infos = s3_filesystem().get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
    parts = bare.split("/")
    return sorted("s3://" + i.path for i in infos if i.type == fs.FileType.File and _match(parts, i.path.split("/")))


def _local_glob(pattern: str) -> list[str]:
    """glob.glob, except that `**` walks the folder without following symlinked folders (Python's
    glob follows them: a link to `..` repeats every file forty times, two such links never end)."""
    if "**" not in pattern:
        return glob.glob(pattern)
    base = glob_base(pattern)
    parts = pattern[len(base) :].strip("/").split("/")
    found = []
    for folder, dirs, files in os.walk(base):  # followlinks=False: a symlinked folder is listed, not entered
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            full = os.path.join(folder, name)
            if _match(parts, os.path.relpath(full, base).split(os.sep)):
                found.append(full)
    return found


def _match(parts: list[str], segments: list[str]) -> bool:
    """A key's segments against a glob's, as a local glob matches: `*` stays within a folder, `**` spans any."""
    if not parts:
        return not segments
    if parts[0] == "**":
        return any(_match(parts[1:], segments[i:]) for i in range(len(segments) + 1))
    return bool(segments) and fnmatch.fnmatchcase(segments[0], parts[0]) and _match(parts[1:], segments[1:])


def list_files(source: Source) -> list[str]:
    """The files the source's `path` glob matches now, each inside the folder the glob names.

    Raises OutsideFolder (before anything is read) for a file that is a symlink, or lies under a
    symlinked folder, resolving outside that folder.
    """
    pattern = source.local_path()
    files = glob_files(pattern)
    if pattern.startswith("s3://"):
        return files
    folder = os.path.realpath(glob_base(pattern))
    for f in files:
        real = os.path.realpath(f)
        if os.path.commonpath([real, folder]) != folder:
            raise OutsideFolder(
                f"{source.where}.path: {f} resolves to {real}, outside {folder}, the folder the glob names; "
                "citylake does not follow links out of a drop folder: copy the file in, or point path: at "
                "the folder it is really in"
            )
    return files


def read_options(source: Source) -> str:
    """A fingerprint of the keys that decide how the source's files are read."""
    # as written, not with the model's defaults: a default added later must not make every file new
    given = {k: source.raw.get(k) for k in READ_KEYS if k != "primary_key"}
    given["primary_key"] = list(source.primary_key)
    return hashlib.sha256(json.dumps(given, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_files(
    source: Source, loaded: set[tuple[str, str]] | None = None, memo: ChecksumMemo | None = None
) -> Iterator[Landing]:
    """One Landing per new or changed file matched by the source's glob; its rows come in pieces.

    A file that cannot be parsed at all (wrong encoding, not JSON, not a workbook) raises UnreadableFile
    while its pieces are read; ingest records it in quarantine once, with the reason, and does not try
    it again until its content (or how the source reads files) changes. `memo` spares reading an
    unchanged file again to learn its checksum; it is saved when the listing has been gone through.
    """
    loaded = loaded or set()
    memo = memo or ChecksumMemo(None)
    options = read_options(source)
    for path in list_files(source):
        try:
            before = _stamp(path)
            digest = memo.checksum(path)
        except FileNotFoundError:
            continue  # moved away since the glob listed it: nothing to load
        if (path, digest) in loaded:
            continue
        yield Landing(
            rows=pa.table({}),
            file=path,
            checksum=digest,
            pieces=lambda p=path, b=before: _checked_pieces(source, p, b),
            options=options,
        )
    memo.save()


def _checked_pieces(source: Source, path: str, before: str) -> Iterator[Piece]:
    """The file's pieces; raises FileChanged at the end when the file changed since its checksum."""
    try:
        yield from _pieces(source, path)
    except (UnreadableFile, FileChanged, MemoryError):
        raise
    except FileNotFoundError:
        raise FileChanged(f"{path} went away while it was read; nothing of it is loaded") from None
    except OSError:
        raise  # the disk or the network failed, not the file: the load fails and the next run tries again
    except Exception as exc:  # noqa: BLE001 - any parser's error means the same: the file cannot be read
        reason = f"file could not be parsed as {source.get('format')}: {type(exc).__name__}: {exc}"
        raise UnreadableFile(reason[:1000]) from None
    if _stamp(path) != before:
        raise FileChanged(f"{path} changed while it was read (still being written?); it is read on the next run")


def _pieces(source: Source, path: str) -> Iterator[Piece]:
    fmt = source.get("format")
    if fmt == "csv":
        yield from _csv_pieces(source, path)
    elif fmt == "jsonl":
        yield from _jsonl_pieces(source, path)
    elif fmt == "parquet":
        yield from _parquet_pieces(source, path)
    elif fmt == "xlsx":
        yield from _xlsx_pieces(source, path)
    else:
        yield _json_document(source, path)


def _encoding(source: Source) -> str:
    """The configured encoding's codec name; every spelling of UTF-8 means UTF-8 with an optional BOM."""
    name = codecs.lookup(source.get("encoding")).name
    return "utf-8-sig" if name in ("utf-8", "utf-8-sig") else name


def _not_text(path: str, encoding: str, exc: UnicodeDecodeError | None = None) -> UnreadableFile:
    """Where a file stops being `encoding` text: the line and the byte, and what to set."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    line, offset = 1, 0
    with open_stream(path) as f:
        while chunk := f.read(_CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                line += chunk[: err.start].count(b"\n")
                byte = chunk[err.start]
                hint = "set encoding: (e.g. latin-1 or cp1252)" if encoding == "utf-8-sig" else "check encoding:"
                return UnreadableFile(
                    f"not {encoding.removesuffix('-sig')} text: line {line} has byte {byte:#04x} "
                    f"(file offset {offset + err.start}); {hint}"
                )
            line += chunk.count(b"\n")
            offset += len(chunk)
    return UnreadableFile(f"not {encoding} text: {exc}" if exc else f"not {encoding} text")


def _header(names: list[str], path: str) -> list[str]:
    """Column names as found; an empty one is named column<N>, a repeated one refuses the file."""
    out, first = [], {}
    for i, raw in enumerate(names, start=1):
        name = raw if raw not in ("", None) else f"column{i}"
        if name in first:
            raise UnreadableFile(
                f"the header names column {name!r} twice (columns {first[name]} and {i}); "
                "rename one so each column can be told apart"
            )
        first[name] = i
        out.append(str(name))
    return out


def _require_keys(source: Source, names: list[str]) -> None:
    """A file whose header lacks a primary-key column cannot give one record: refused whole, with a hint."""
    missing = [k for k in source.primary_key if k not in names]
    if not missing:
        return
    hint = "fix primary_key in city.yaml or the file's header"
    if len(names) == 1:
        for d in (";", "\t", "|", ","):
            if d in names[0] and d != source.get("delimiter"):
                hint = f"the header is one column holding {d!r}: is the file {d!r}-separated? set delimiter: {d!r}"
                break
    shown = ", ".join(repr(n[:60]) for n in names[:20]) + (", ..." if len(names) > 20 else "")
    raise UnreadableFile(f"no primary key column {', '.join(map(repr, missing))} in the header ({shown}); {hint}")


def _csv_header(source: Source, path: str, encoding: str) -> list[str] | None:
    """The first record of a CSV (None: the file is empty), read from at most its first CSV_BLOCK bytes."""
    with open_stream(path) as f:
        head = f.read(CSV_BLOCK)
    if not head.strip():
        return None
    try:
        text = codecs.getincrementaldecoder(encoding)(errors="strict").decode(head, final=len(head) < CSV_BLOCK)
    except UnicodeDecodeError as exc:
        raise _not_text(path, encoding, exc) from None
    if len(head) == CSV_BLOCK and "\n" not in text:
        raise UnreadableFile(f"the first line is longer than {CSV_BLOCK} bytes: not a CSV header")
    try:
        first = next(csv.reader(io.StringIO(text, newline=""), delimiter=source.get("delimiter")), [])
    except csv.Error as exc:
        raise UnreadableFile(f"the header line cannot be read as CSV: {exc}") from None
    if not first:
        raise UnreadableFile("the first line is blank: the header must be the file's first line")
    return first


class _WithTail(io.RawIOBase):
    """A binary stream with bytes appended after its end (the CSV end-of-file sentinel)."""

    def __init__(self, raw, tail: bytes) -> None:
        self.raw, self.tail = raw, tail

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if not data and self.tail:
            data, self.tail = self.tail[: max(size, 0) or None], self.tail[max(size, 0) or len(self.tail) :]
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


class _RowNumbers:
    """Record numbers of a CSV's valid rows, from the numbers pyarrow gives its invalid rows: the valid
    rows fill the numbers in between, in order (header = 1)."""

    def __init__(self, first: int) -> None:
        self.first, self.valid, self.skipped = first, 0, 0
        self.invalid: list[int] = []

    def take(self, n: int) -> np.ndarray:
        v = np.arange(self.valid, self.valid + n)
        # valid rows before each pending invalid row; those all before this batch count once and go
        gaps = np.asarray(self.invalid, dtype=np.int64) - self.first - self.skipped - np.arange(len(self.invalid))
        behind = int(np.searchsorted(gaps, self.valid, side="left"))
        self.skipped += behind
        del self.invalid[:behind]
        gaps = gaps[behind:] - behind
        rows = v + self.first + self.skipped + np.searchsorted(gaps, v, side="right")
        self.valid += n
        return rows


def _locations(path: str, rows: np.ndarray) -> pa.Array:
    """Each row's place in its file (path:N), used for the location of a rejected row."""
    return pc.binary_join_element_wise(pa.scalar(path), pc.cast(pa.array(rows), pa.string()), ":")


def _with_location(table: pa.Table, path: str, rows: np.ndarray) -> pa.Table:
    """`table` with its LOCATION column."""
    return table.append_column(LOCATION, _locations(path, rows))


def _csv_pieces(source: Source, path: str) -> Iterator[Piece]:
    """CSV through pyarrow's streaming reader, every column as text; ragged rows are rejected with their
    row number (the header is row 1; a quoted value spanning lines counts once; blank lines not at all).

    A sentinel record is read after the file's end: when a quote left open swallowed the rest of the
    file, the sentinel is inside the record that swallowed it, which is rejected instead of landing
    with the following rows as its text."""
    import pyarrow.csv as pcsv

    encoding = _encoding(source)
    first = _csv_header(source, path, encoding)
    if first is None:
        raise UnreadableFile("empty file: no header line and no rows")
    header = bool(source.get("header"))
    names = _header(first, path) if header else [f"column{i + 1}" for i in range(len(first))]
    if header:
        _require_keys(source, names)
    delimiter = source.get("delimiter")
    sentinel = f"citylake-end-{secrets.token_hex(8)}"
    codec = "utf-8" if encoding == "utf-8-sig" else encoding
    end = "\n" + delimiter.join([sentinel] * len(names))
    tail = b"" if codec.startswith(("utf-16", "utf-32")) else end.encode(codec)
    rejected: list[Rejected] = []
    numbers = _RowNumbers(2 if header else 1)

    def invalid(row) -> str:
        if row.number is not None:
            numbers.invalid.append(row.number)
        if row.text.strip():
            record = row.text if len(row.text) <= MAX_RECORD else row.text[:MAX_RECORD] + "...(cut)"
            rejected.append(
                Rejected(
                    record, f"expected {row.expected_columns} fields, got {row.actual_columns}", f"{path}:{row.number}"
                )
            )
        elif row.number is not None:
            numbers.invalid.pop()  # a blank-looking line: not a record
        return "skip"

    stream = _WithTail(open_stream(path), tail)
    reader = None
    held: list[pa.Table] = []  # the latest batch stays back: the end-of-file check may need to change it
    rows = done = size = 0
    seen_sentinel = not tail
    try:
        reader = pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(
                use_threads=False,  # row numbers are only known to a single-threaded reader
                block_size=CSV_BLOCK,
                column_names=names,
                skip_rows=1 if header else 0,
                encoding="utf8" if encoding == "utf-8-sig" else encoding,
            ),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=invalid),
            convert_options=pcsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True, null_values=[""]
            ),
        )
        for batch in reader:
            table = _with_location(pa.Table.from_batches([batch]), path, numbers.take(batch.num_rows))
            if not seen_sentinel and table.num_rows and table.column(0)[-1].as_py() == sentinel:
                table, seen_sentinel = table.slice(0, table.num_rows - 1), True
            held.append(table)
            rows += table.num_rows
            size += table.nbytes
            if (
                rows - held[-1].num_rows >= PIECE_ROWS
                or size - held[-1].nbytes >= PIECE_BYTES
                or len(rejected) >= PIECE_ROWS
            ):
                piece = pa.concat_tables(held[:-1]) if len(held) > 1 else table.schema.empty_table()
                yield piece, rejected[:]
                done += piece.num_rows + len(rejected)
                held, rows, size = held[-1:], held[-1].num_rows, held[-1].nbytes
                rejected.clear()
    except UnicodeDecodeError as exc:
        raise _not_text(path, encoding, exc) from None
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if "utf8" in message.lower() or "utf-8" in message.lower():
            raise _not_text(path, encoding) from None
        if "straddl" in message or "out of sync" in message:
            raise UnreadableFile(
                f"a quoted value runs on for more than {CSV_BLOCK} bytes after about row {done + rows + 1} "
                "(a quote left open?); fix the quoting in the file"
            ) from None
        raise
    finally:
        if reader is not None:
            reader.close()
        stream.close()
    last = pa.concat_tables(held) if held else pa.table({n: pa.array([], pa.string()) for n in [*names, LOCATION]})
    if not seen_sentinel:
        last, rejected = _open_quote(last, rejected, sentinel)
    if last.num_rows or rejected:
        yield last, rejected


def _open_quote(last: pa.Table, rejected: list[Rejected], sentinel: str) -> tuple[pa.Table, list[Rejected]]:
    """The file ended inside a quoted value: the record holding the sentinel swallowed the rest of the file."""
    reason = "a quote opened in this record is never closed: the rest of the file was read into it"
    if rejected and sentinel in rejected[-1].record:
        rejected[-1].record = rejected[-1].record.split("\n" + sentinel)[0].split(sentinel)[0]
        rejected[-1].reason = f"{reason} ({rejected[-1].reason})"
        return last, rejected
    if last.num_rows:
        row = last.slice(last.num_rows - 1).to_pylist()[0]
        where = row.pop(LOCATION)
        cut = {k: (v.split(sentinel)[0].rstrip("\n") if isinstance(v, str) else v) for k, v in row.items()}
        record = json.dumps(cut, sort_keys=True)
        rejected.append(Rejected(record[:MAX_RECORD], reason, where))
        return last.slice(0, last.num_rows - 1), rejected
    return last, rejected


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply to read (JSON nested more than about 900 levels)"
    if "integer string conversion" in str(exc):
        return "not readable JSON: a number of more than 4300 digits"
    return f"not readable JSON: {exc}"


def jsonl_records(lines: Iterator[tuple[int, str]], path: str) -> tuple[list[dict], list[Rejected]]:
    """JSON lines (numbered) as records; a line that is not a JSON object is rejected with its line number."""
    records, rejected = [], []
    for n, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            record = line if len(line) <= MAX_RECORD else line[:MAX_RECORD] + "...(cut)"
            rejected.append(Rejected(record, _json_error(exc), f"{path}:{n}"))
            continue
        if isinstance(obj, dict):
            obj[LOCATION] = f"{path}:{n}"
            records.append(obj)
        else:
            rejected.append(Rejected(line[:MAX_RECORD], "a JSON line must be an object", f"{path}:{n}"))
    return records, rejected


def _lines(source: Source, path: str) -> Iterator[list[tuple[int, str]]]:
    """The file's lines (split at \\n only), numbered from 1, in lists of PIECE_ROWS; a line longer than
    MAX_LINE bytes refuses the file rather than filling memory."""
    encoding = _encoding(source)
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    n, piece, tail, chars = 0, [], "", 0
    with open_stream(path) as f:
        while True:
            chunk = f.read(_CHUNK)
            try:
                text = tail + decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                raise _not_text(path, encoding, exc) from None
            lines = text.split("\n")
            tail = lines.pop() if chunk else ""
            if len(tail) > MAX_LINE:
                raise UnreadableFile(f"line {n + len(lines) + 1} is longer than {MAX_LINE} characters: not JSON lines")
            for line in lines:
                n += 1
                piece.append((n, line.removesuffix("\r")))
                chars += len(line)
                if len(piece) >= PIECE_ROWS or chars >= PIECE_BYTES:
                    yield piece
                    piece, chars = [], 0
            if not chunk:
                break
    if piece:
        yield piece


def _python_jsonl_pieces(source: Source, path: str) -> Iterator[Piece]:
    """The reference reader: json.loads line by line, every value turned into text by `text_table`."""
    for lines in _lines(source, path):
        yield _python_lines(lines, path)


def _python_lines(lines: list[tuple[int, str]], path: str) -> Piece:
    records, rejected = jsonl_records(iter(lines), path)
    JSONL_LINES["python"] += len(lines)
    return text_table(records), rejected


def _jsonl_pieces(source: Source, path: str) -> Iterator[Piece]:
    """The file's pieces exactly as `_python_jsonl_pieces` gives them, read by pyarrow where it can be
    (see the module docstring)."""
    if _encoding(source) != "utf-8-sig":
        yield from _python_jsonl_pieces(source, path)
        return
    chunks, size = [], 0
    with open_stream(path) as f:  # (read(PIECE_BYTES) would allocate that much for any file)
        while size <= PIECE_BYTES and (chunk := f.read(_CHUNK)):
            chunks.append(chunk)
            size += len(chunk)
    data = b"".join(chunks)
    del chunks
    if size <= PIECE_BYTES and data.count(b"\n") < PIECE_ROWS:
        # one piece: read as bytes, normalised as _lines would (no BOM, \r\n as \n)
        if not data.isascii():
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                yield from _python_jsonl_pieces(source, path)  # refuses the file with where it stops being text
                return
        data = data.removeprefix(codecs.BOM_UTF8)
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").removesuffix(b"\r")
        yield _native_piece(data, 1, path)
        return
    del data
    for lines in _lines(source, path):
        yield _native_piece("\n".join([line for _, line in lines]).encode("utf-8"), lines[0][0], path)


#: lines of JSON-lines files read by pyarrow ("native") and by json.loads ("python") in this process: how
#: much of a load took the fast path (the property test and the benchmark read it)
JSONL_LINES: Counter[str] = Counter()
#: lines pyarrow may be handed for one piece, as a multiple of the piece's lines (a run it refuses is read
#: again in parts; each read also counts MIN_RUN lines for its fixed cost); past that the piece's
#: remaining lines are read in Python
NATIVE_BUDGET = 3
#: a run of fewer lines is read in Python: a pyarrow read costs about what json.loads of ~100 lines does
MIN_RUN = 128
_ERROR_ROW = re.compile(r" in row (\d+)$")


def _native_piece(data: bytes, first: int, path: str) -> Piece:
    """One piece's lines (UTF-8, joined by \\n, numbered from `first`) as `_python_lines` gives them.

    Runs of lines shaped like one object each (`{` ... `}`) go to pyarrow; a run it refuses is split at the
    row its error names, a run it reads but cannot give exactly at the rows it cannot give (see
    `_native_run`): those lines are read in Python, the lines between them natively again (after an
    error, in blocks about twice as long as the stretch before it). Other lines (blank, broken, not
    objects) and runs shorter than MIN_RUN are read in Python. The parts' tables are joined with their
    columns in the order first met, as `text_table` has them."""
    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    starts = np.concatenate(([0], ends + 1))
    ends = np.append(ends, len(data))
    shaped = ends > starts
    shaped[shaped] = (buf[starts[shaped]] == ord("{")) & (buf[ends[shaped] - 1] == ord("}"))
    cuts = [0, *(np.flatnonzero(np.diff(shaped.astype(np.int8))) + 1).tolist(), len(starts)]
    todo = [(i, j, bool(shaped[i])) for i, j in zip(cuts, cuts[1:], strict=False)][::-1]
    parts: list[Piece] = []
    python: list[int] = []  # the run of lines waiting to be read in Python: [first, end)
    budget = NATIVE_BUDGET * len(starts)
    while todo:
        i, j, native = todo.pop()
        if native and j - i >= MIN_RUN and j - i + MIN_RUN <= budget:
            budget -= j - i + MIN_RUN
            try:
                got = _native_run(data[starts[i] : ends[j - 1]], first + i, j - i, path)
            except MemoryError:
                raise
            except Exception:  # noqa: BLE001 - whatever pyarrow could not do, Python does
                got = None
            if isinstance(got, tuple):
                if python:
                    parts.append(_python_part(data, starts, ends, python, first, path))
                    python = []
                JSONL_LINES["native"] += j - i
                parts.append(got)
                continue
            if got:  # these rows cannot be read natively: they go to Python, the runs between them back here
                split: list[tuple[int, int, bool]] = []
                for a, b in zip([-1, *got], [*got, j - i], strict=True):
                    if b - a > 1:
                        split.extend(
                            _blocks(i + a + 1, i + b, max(MIN_RUN, 2 * (a + 1))) if a >= 0 else [(i, i + b, True)]
                        )
                    if b < j - i:
                        split.append((i + b, i + b + 1, False))
                todo.extend(split[::-1])
                continue
        python = [python[0] if python else i, j]
    if python:
        parts.append(_python_part(data, starts, ends, python, first, path))
    return _joined(parts)


def _blocks(i: int, j: int, size: int) -> list[tuple[int, int, bool]]:
    """Lines i..j as native runs of `size` lines (the last one longer rather than short)."""
    cuts = list(range(i, j, size))
    if len(cuts) > 1 and j - cuts[-1] < MIN_RUN:
        cuts.pop()
    return [(a, b, True) for a, b in zip(cuts, [*cuts[1:], j], strict=True)]


def _python_part(data: bytes, starts: np.ndarray, ends: np.ndarray, run: list[int], first: int, path: str) -> Piece:
    """Lines run[0]..run[1] read by json.loads; an error is raised as the whole piece read in Python raises it."""
    i, j = run
    if not (ends[i:j] > starts[i:j]).any():
        return pa.table({}), []  # empty lines (the one after the last \\n): nothing, as in Python
    text = data[starts[i] : ends[j - 1]].decode("utf-8").split("\n")
    try:
        return _python_lines(list(zip(range(first + i, first + j), text, strict=True)), path)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - raised word for word as the whole piece read in Python raises it
        return _python_lines(list(enumerate(data.decode("utf-8").split("\n"), start=first)), path)


def _joined(parts: list[Piece]) -> Piece:
    """Consecutive parts of one piece as one: columns in the order first met, absent ones null."""
    parts = [p for p in parts if p[0].num_rows or p[1]] or [(pa.table({}), [])]
    if len(parts) == 1:
        return parts[0]
    names: dict[str, None] = {}
    for table, _ in parts:
        names.update(dict.fromkeys(table.column_names))

    def column(table: pa.Table, name: str) -> list[pa.Array]:
        return table.column(name).chunks if name in table.column_names else [pa.nulls(table.num_rows, pa.string())]

    columns = {n: pa.chunked_array([c for t, _ in parts for c in column(t, n)], pa.string()) for n in names}
    return pa.table(columns).combine_chunks(), [r for _, rejected in parts for r in rejected]


def _native_run(data: bytes, first: int, rows: int, path: str) -> Piece | list[int] | None:
    """`rows` lines (each `{`...`}`) read by pyarrow.json, every value as `text_table` would write it.

    Returns the piece, or the rows pyarrow cannot give exactly (its parse error's row; nested values;
    non-finite numbers; integral numbers of 2**53 or more, which may have been integers beyond int64 or
    mixed with floats), or None when the run is better read in Python whole."""
    import pyarrow.json as pj

    end = data.find(b"\n")
    try:
        head = json.loads((data if end < 0 else data[:end]).decode("utf-8"))
    except (ValueError, RecursionError):
        return [0]
    if not isinstance(head, dict) or LOCATION in head:
        return [0]

    def read(strings: list[str]) -> pa.Table | list[int] | None:
        # one block, one thread: columns in the order pyarrow meets them, errors name the row
        try:
            return pj.read_json(
                pa.BufferReader(data),
                read_options=pj.ReadOptions(use_threads=False, block_size=len(data) + 1),
                parse_options=pj.ParseOptions(
                    explicit_schema=pa.schema([(n, pa.string()) for n in strings]), unexpected_field_behavior="infer"
                ),
            )
        except MemoryError:
            raise
        except pa.ArrowException as exc:
            found = _ERROR_ROW.search(str(exc))
            return [int(found.group(1))] if found and int(found.group(1)) < rows else None

    # the first line's strings are read as strings (pyarrow would make timestamps of some)
    strings = [k for k, v in head.items() if isinstance(v, str)]
    table = read(strings)
    if not isinstance(table, pa.Table):
        return table
    names = table.column_names
    if table.num_rows != rows or len(set(names)) != len(names) or LOCATION in names or not set(head) <= set(names):
        return None  # a line held more than one object, or keys pyarrow and json.loads tell apart differently
    # explicit columns come first: the first line's keys in its order, then the others as pyarrow met them
    order = [*head, *(n for n in names if n not in head)]
    dated = [n for n in names if pa.types.is_temporal(table.schema.field(n).type)]
    if dated:
        table = read([*strings, *dated])
        if not isinstance(table, pa.Table) or table.num_rows != rows:
            return None
    columns, bad = [], np.zeros(rows, bool)
    for n in order:
        text = _text_column(table.column(n))
        if text is None:
            return None
        if isinstance(text, np.ndarray):
            bad |= text
        columns.append(text)
    if bad.any():
        return np.flatnonzero(bad).tolist()
    where = _locations(path, np.arange(first, first + rows))
    columns.insert(len(head), where)
    return pa.Table.from_arrays(columns, names=[*order[: len(head)], LOCATION, *order[len(head) :]]), []


def _text_column(col: pa.ChunkedArray) -> pa.Array | np.ndarray | None:
    """A column pyarrow read, as text exactly as `text_table` writes each value; or a mask of the rows it
    cannot write (nested values, non-finite or too large numbers), or None (a type it does not know)."""
    kind, col = col.type, col.combine_chunks()
    if pa.types.is_string(kind):
        return col
    if pa.types.is_null(kind):
        return pa.nulls(len(col), pa.string())
    if pa.types.is_boolean(kind):
        return pc.if_else(col, "true", "false")
    if pa.types.is_int64(kind):
        return pc.cast(col, pa.string())
    if pa.types.is_nested(kind):
        return pc.is_valid(col).to_numpy(zero_copy_only=False)
    if not pa.types.is_float64(kind):
        return None
    values = col.to_numpy(zero_copy_only=False)
    valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
    size = np.abs(values)
    with np.errstate(invalid="ignore"):
        integral = valid & (np.floor(values) == values)
    bad = valid & (~np.isfinite(values) | (integral & (size >= 2**53)))
    if bad.any():
        return bad
    # pyarrow writes the shortest digits, as Python does, and an integral value without ".0" (101.0 is
    # 101: a JSON number is a number), but it switches to an exponent elsewhere and writes -0.0 as -0: its
    # text is kept where it wrote no exponent and Python would write none (1e-4 <= |x| < 1e16)
    text = pc.cast(col, pa.string())
    exponent = pc.fill_null(pc.match_substring(text, "e"), False).to_numpy(zero_copy_only=False)
    whole = integral & (exponent | (values == 0))
    if whole.any():
        ints = pc.cast(pc.cast(pa.array(values[whole]), pa.int64()), pa.string())
        text = pc.replace_with_mask(text, pa.array(whole), ints)
    python = valid & ~integral & (exponent | (size < 1e-4) | (size >= 1e16))
    if python.any():
        floats = pa.array([repr(float(v)) for v in values[python]], pa.string())
        text = pc.replace_with_mask(text, pa.array(python), floats)
    return text


def _json_document(source: Source, path: str) -> Piece:
    limit = source.get("max_document_mb")
    size = int(_stamp(path).split(":")[0])
    if size > limit * (1 << 20):
        raise UnreadableFile(
            f"a JSON document of {size / (1 << 20):.0f} MB is parsed whole and max_document_mb is {limit}; "
            "deliver JSON lines (format: jsonl), or raise max_document_mb"
        )
    try:
        text = read_bytes(path).decode(_encoding(source), errors="strict")
    except UnicodeDecodeError as exc:
        raise _not_text(path, _encoding(source), exc) from None
    try:
        body: Any = json.loads(text)
    except RecursionError:
        raise UnreadableFile(_json_error(RecursionError())) from None
    for part in (source.get("records_path") or "").split(".") if source.get("records_path") else []:
        body = body.get(part, None) if isinstance(body, dict) else None
    if not isinstance(body, list):
        raise UnreadableFile(f"{source.where}: {path} holds no JSON array of records; set records_path")
    good = [{**r, LOCATION: f"{path} item {i}"} for i, r in enumerate(body) if isinstance(r, dict)]
    bad = [
        Rejected(json.dumps(r)[:MAX_RECORD], "not a JSON object", f"{path} item {i}")
        for i, r in enumerate(body)
        if not isinstance(r, dict)
    ]
    return text_table(good), bad


def _parquet_pieces(source: Source, path: str) -> Iterator[Piece]:
    import pyarrow.parquet as pq

    with _open_seekable(path) as f:
        pf = pq.ParquetFile(f)
        names = _header(pf.schema_arrow.names, path)
        _require_keys(source, names)
        done = 0
        for batch in pf.iter_batches(batch_size=PIECE_ROWS):
            rows = np.arange(done + 1, done + batch.num_rows + 1)
            done += batch.num_rows
            yield _with_location(pa.Table.from_batches([batch]), path, rows), []


def _xlsx_pieces(source: Source, path: str) -> Iterator[Piece]:
    from openpyxl import load_workbook

    def cell(v: object) -> object:
        # Excel has no date type: a midnight datetime is a date cell
        if isinstance(v, dt.datetime) and v.time() == dt.time(0):
            return v.date()
        return v

    with _open_seekable(path) as f:
        wb = load_workbook(f, read_only=True, data_only=True)
        try:
            ws = wb[source.get("sheet")] if source.get("sheet") else wb.worksheets[0]
            rows = ws.iter_rows(values_only=True)
            first = next(rows, None)
            if first is None:
                return
            header = _header(["" if h is None else str(h) for h in first], path)
            _require_keys(source, header)
            records: list[dict] = []
            for n, r in enumerate(rows, start=2):
                if any(v is not None for v in r):
                    records.append({**dict(zip(header, map(cell, r), strict=False)), LOCATION: f"{path}:{n}"})
                if len(records) >= PIECE_ROWS:
                    yield text_table(records, header), []
                    records = []
            yield text_table(records, header), []
        finally:
            wb.close()


def file_stamps(pattern: str) -> dict[str, str]:
    """Files matching a glob now -> "size:mtime" (cheap change detection for sensors; no content read)."""
    if pattern.startswith("s3://"):
        from pyarrow import fs

        infos = s3_filesystem().get_file_info([p.removeprefix("s3://") for p in glob_files(pattern)])
        return {"s3://" + i.path: f"{i.size}:{i.mtime_ns}" for i in infos if i.type == fs.FileType.File}
    stamps = {}
    for p in glob_files(pattern):
        try:
            st = Path(p).stat()
        except FileNotFoundError:
            continue
        stamps[p] = f"{st.st_size}:{st.st_mtime_ns}"
    return stamps


#: JSON lines read to learn a file's keys (`citylake check`): a key only later records have is not seen
SAMPLE_LINES = 1000


def file_columns(source: Source, path: str) -> list[str]:
    """The columns a file would give, read cheaply (for `citylake check`): a CSV's header, an XLSX sheet's
    first row, a Parquet schema, the keys of the first SAMPLE_LINES JSON lines or of a JSON document's
    records. Raises UnreadableFile as a load would."""
    fmt = source.get("format")
    if fmt == "csv":
        first = _csv_header(source, path, _encoding(source))
        if first is None:
            raise UnreadableFile("empty file: no header line and no rows")
        return _header(first, path) if source.get("header", True) else [f"column{i + 1}" for i in range(len(first))]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with _open_seekable(path) as f:
            return _header(pq.ParquetFile(f).schema_arrow.names, path)
    if fmt == "xlsx":
        from openpyxl import load_workbook

        with _open_seekable(path) as f:
            wb = load_workbook(f, read_only=True, data_only=True)
            try:
                ws = wb[source.get("sheet")] if source.get("sheet") else wb.worksheets[0]
                first = next(ws.iter_rows(values_only=True, max_row=1), None) or ()
                return _header(["" if h is None else str(h) for h in first], path)
            finally:
                wb.close()
    if fmt == "jsonl":
        lines: list[tuple[int, str]] = []
        with open_stream(path) as raw, io.TextIOWrapper(raw, encoding=_encoding(source), newline="") as f:
            try:
                for n, line in enumerate(f, start=1):
                    lines.append((n, line.rstrip("\r\n")))
                    if n >= SAMPLE_LINES:
                        break
            except UnicodeDecodeError as exc:
                raise _not_text(path, _encoding(source), exc) from None
        records, _ = jsonl_records(iter(lines), path)
    else:
        table, _ = _json_document(source, path)
        return [c for c in table.column_names if c != LOCATION]
    return [c for c in text_table(records).column_names if c != LOCATION]
