"""JSON lines read natively (pyarrow.json) give exactly what the Python reader (json.loads line by line,
`text_table`) gives: the same pieces, columns in the same order, the same text for every value, the same
LOCATION, the same rejected lines with their reasons, the same error for a file that cannot be read.

Random files hold what agencies send and what they get wrong: keys of any text, in any order, missing or
null; integers up to and past int64, floats of every magnitude written in many ways, integral floats,
booleans, strings that look like timestamps, dates or numbers, nested values; broken lines, blank and
whitespace lines, two objects on a line, duplicate keys, NaN and Infinity, CRLF, a BOM, bytes that are
not UTF-8. The native path must also really be taken: clean files never reach json.loads."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pytest

from orchestration.config import Source
from orchestration.connectors import files

KEYS = ["id", "station_id", "value", "ts", "a", "b", "A", "with space", " lead", "é", "ключ", "日本語", "", "x/y"]
KEYS += ["a.b", 'q"uote', "back\\slash", "tab\tkey", "😀", "0", "null", "__citylake"]
STAMPS = ["2025-01-01T00:00:00Z", "2025-01-01 00:00:00", "2025-01-01", "2025-01-01T00:00:00+01:00", "12:00:00"]
STAMPS += ["2025-01-01T00:00:00.123", "2025-13-45", "2025-01-01T24:00:00", "1970-01-01T00:00:00-05:30", "20250101"]
TEXTS = ["", " ", "x", "n/a", "1", "1.0", "-0", "1e5", "true", "null", "NaN", "é\u00e9", "日本", "😀", "\u2028", "a\\b"]
TEXTS += ['"', "\x00", "\x7f", "\ufeff", "tab\there", "line\nbreak", "{}", "[1]", "{", "  pad  "]
WILD = [math.nan, math.inf, -math.inf, {"x": 1}, [1, "a"], [], {}, None, True, 1, 1.5, "s", {"b": 2, "a": [1.0]}]


def _float(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.3:
        return round(rng.uniform(-100, 100), rng.randint(0, 4))
    if pick < 0.5:
        return rng.choice([0.0, -0.0, 101.0, 1e16, 1e-05, 0.1 + 0.2, 2.0**53, 2.0**53 - 1, 1e15 + 0.5, 5e-324])
    if pick < 0.7:
        return float(rng.randint(-(2**60), 2**60)) if rng.random() < 0.5 else float(rng.randint(-1000, 1000))
    if pick < 0.9:
        return rng.choice([1, -1]) * 10 ** rng.uniform(-30, 30)
    bits = rng.getrandbits(64).to_bytes(8, "little")
    x = float(memoryview(bits).cast("d")[0])
    return x if math.isfinite(x) else 1.25


def _float_text(x: float, rng: random.Random) -> str:
    """A JSON literal of x, written as different writers write it (all read back as the same float...
    mostly: %.3e and %g round, which only changes the value, not what both readers must agree on)."""
    form = rng.random()
    if form < 0.6:
        return repr(x)
    return rng.choice([f"{x:.17g}", f"{x:e}", f"{x:.3E}", f"{x:g}", f"{x:.17e}", repr(x).upper()]).replace(
        "inf", "1e999"
    )


def _int(rng: random.Random) -> int:
    pick = rng.random()
    if pick < 0.7:
        return rng.randint(-1000, 100000)
    return rng.choice([2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63), 2**63, 2**64, -(2**64), 10**20, 10**30, 0])


def _value(kind: str, rng: random.Random, safe: bool) -> str:
    """One value's JSON text for a column of this kind (safe: what the native path must take whole)."""
    if kind == "int":
        if not safe:
            return str(_int(rng))
        return str(rng.randint(-(2**62), 2**62) if rng.random() < 0.2 else rng.randint(-9, 10**6))
    if kind == "float":
        x = _float(rng)
        if safe and (x.is_integer() and abs(x) >= 2**53):
            x = 0.5
        return repr(x) if safe else _float_text(x, rng)
    if kind == "number":  # pyarrow reads the column as floats: integers of 2**53 or more are not safe
        return (
            _value(rng.choice(["int", "float"]), rng, safe)
            if not safe
            else rng.choice([str(rng.randint(-9, 999)), "1.5"])
        )
    if kind == "bool":
        return rng.choice(["true", "false"])
    if kind == "stamp":
        return json.dumps(rng.choice(STAMPS), ensure_ascii=rng.random() < 0.5)
    if kind == "string":
        text = rng.choice(TEXTS + STAMPS) if rng.random() < 0.7 else "".join(rng.choice('ab é日\\"/') for _ in range(5))
        return json.dumps(text, ensure_ascii=rng.random() < 0.5)
    if kind == "nested":
        return json.dumps(rng.choice(WILD[3:]))
    raw = rng.choice(WILD)  # wild: anything, even what JSON does not allow (NaN, Infinity)
    return json.dumps(raw) if not isinstance(raw, float) or not rng.random() < 0.3 else _float_text(raw, rng)


def _key(key: str, rng: random.Random) -> str:
    if key and key.isascii() and key.isalpha() and rng.random() < 0.05:
        return '"' + "".join(f"\\u{ord(c):04x}" for c in key) + '"'  # the same key, escaped
    return json.dumps(key, ensure_ascii=rng.random() < 0.5)


def _broken(line: str, rng: random.Random) -> str:
    """A line as agencies get it wrong."""
    pick = rng.randrange(16)
    if pick == 0:
        return line[: rng.randrange(len(line))]
    if pick == 1:
        return rng.choice(["[1, 2]", "1", '"x"', "null", "true", "[]", "{}", "{} ", "[{}]"])
    if pick == 2:
        return rng.choice(["", " ", "\t", "\u3000", "\x0c", "\x1c", "\r", " \r"])
    if pick == 3:
        return line + rng.choice(["", " ", "\n"[:0]]) + line
    if pick == 4:
        return line[:-1] + ', "a": 1, "a": "2"}' if line != "{}" else '{"a": 1, "a": 2}'
    if pick == 5:
        return rng.choice([" ", "\t", "\r", ""]) + line + rng.choice([" ", "\t", "\r", "\r\r", ""])
    if pick == 6:
        return (
            line[:-1]
            + (", " if line != "{}" else "")
            + '"n": '
            + rng.choice(["NaN", "Infinity", "-Infinity", "Inf", "-NaN", "nan"])
            + "}"
        )
    if pick == 7:
        at = rng.randrange(len(line) + 1)
        return (
            line[:at]
            + rng.choice([",", "}", "{", '"', "\\", "x", "\x00", "\ufeff", " ", "\r", "1", "\t", "é"])
            + line[at:]
        )
    if pick == 8:
        return line[:-1] + (", " if line != "{}" else "") + '"s": "\\ud800"}'
    if pick == 9:
        return (
            line[:-1]
            + (", " if line != "{}" else "")
            + '"e": '
            + rng.choice(["1e400", "-1e400", "1e-400", "1E+400"])
            + "}"
        )
    if pick == 10:
        depth = rng.choice([3, 60, 1200])
        return '{"deep": ' + "[" * depth + "]" * depth + "}"
    if pick == 11:
        return '{"a": 1, "\\u0061": 2}'
    if pick == 12:
        return line + ","
    if pick == 13:
        return line.replace(":", ": ", 1).replace(",", " ,", 1)  # valid, spaced differently
    if pick == 14:
        return '{"__citylake_location": "forged", "a": 1}'
    return (
        line[:-1]
        + (", " if line != "{}" else "")
        + '"big": '
        + str(rng.choice([2**63, 10**25, -(2**64), 2**53 + 1]))
        + "}"
    )


def _file(rng: random.Random, *, clean: bool = False, lines: int | None = None) -> bytes:
    """A random JSON-lines file (clean: nothing the native path should not take whole)."""
    keys = list(dict.fromkeys(rng.sample(KEYS, rng.randint(1, 8))))
    kinds = ["int", "float", "number", "bool", "stamp", "string"] + ([] if clean else ["nested", "wild"])
    kind = {k: rng.choice(kinds) for k in keys}
    missing = {k: rng.choice([0, 0, 0.1, 0.5]) for k in keys}
    nulls = {k: rng.choice([0, 0, 0.05, 0.5, 1]) for k in keys}
    shuffle = rng.random() < 0.3
    bad = 0 if clean else rng.choice([0, 0, 0.01, 0.1, 0.5])
    out = []
    for _ in range(lines or (rng.choice([0, 1, 2, 5, 20, 60, 300]) if not clean else rng.choice([1, 3, 40]))):
        present = [k for k in keys if rng.random() >= missing[k]]
        if shuffle:
            rng.shuffle(present)
        colon, comma = rng.choice([(":", ","), (": ", ", "), (" : ", " , ")])
        body = comma.join(
            _key(k, rng) + colon + ("null" if rng.random() < nulls[k] else _value(kind[k], rng, clean)) for k in present
        )
        line = "{" + body + "}"
        out.append(_broken(line, rng) if rng.random() < bad else line)
    end = "\r\n" if rng.random() < 0.2 else "\n"
    text = end.join(out) + rng.choice([end, end, "", end + end, end + " " + end] if not clean else [end, ""])
    data = text.encode("utf-8")
    if rng.random() < 0.1:
        data = b"\xef\xbb\xbf" + data
    if not clean and rng.random() < 0.03 and data:
        at = rng.randrange(len(data))
        data = data[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe9"]) + data[at:]
    if not clean and rng.random() < 0.02:
        data = rng.choice([b"", b"\n", b"\r\n", b"\xef\xbb\xbf", b" \n\n"])
    return data


def _source(path: Path, encoding: str | None = None) -> Source:
    raw = {"kind": "files", "format": "jsonl", "path": str(path)} | ({"encoding": encoding} if encoding else {})
    return Source(agency="t", name="jsonl", kind="files", raw=raw, base_dir=path.parent, primary_key=(), timezone="UTC")


def _outcome(read, source: Source, path: Path):
    try:
        return [(t, r) for t, r in read(source, str(path))], None
    except Exception as exc:  # noqa: BLE001 - the error itself is what is compared
        return None, (type(exc).__name__, str(exc))


def _same(path: Path, source: Source) -> None:
    want, want_error = _outcome(files._python_jsonl_pieces, source, path)
    got, got_error = _outcome(files._jsonl_pieces, source, path)
    shown = path.read_bytes()[:3000]
    assert got_error == want_error, shown
    if want is None:
        return
    assert len(got) == len(want), shown
    for (table, rejected), (ref, ref_rejected) in zip(got, want, strict=True):
        assert table.column_names == ref.column_names, shown
        assert table.schema.equals(ref.schema), shown
        assert table.equals(ref), (shown, table.to_pylist()[:5], ref.to_pylist()[:5])
        assert rejected == ref_rejected, shown


@pytest.mark.parametrize(
    ("small_pieces", "min_run", "share"),
    [(False, None, 0.01), (False, 1, 0.25), (True, 1, 0.25)],
    ids=["one-piece", "one-piece-every-split-native", "small-pieces-every-split-native"],
)
def test_native_reader_gives_exactly_what_the_python_reader_gives(tmp_path, monkeypatch, small_pieces, min_run, share):
    if small_pieces:  # files of several pieces: read line by line, each piece natively
        monkeypatch.setattr(files, "PIECE_ROWS", 7)
        monkeypatch.setattr(files, "PIECE_BYTES", 400)
    if min_run:  # every run between lines read in Python tried natively (the splitting and joining tested hard)
        monkeypatch.setattr(files, "MIN_RUN", min_run)
        monkeypatch.setattr(files, "NATIVE_BUDGET", 10_000)
    rng = random.Random(1400 + small_pieces)
    before = files.JSONL_LINES.copy()
    for n in range(700):
        path = tmp_path / f"f{n}.jsonl"
        path.write_bytes(_file(rng))
        _same(path, _source(path))
    done = files.JSONL_LINES - before
    # (the Python reference's own lines count as "python" too: each file is read once each way)
    assert done["native"] > share * (done["python"] - done["native"]), done


@pytest.mark.parametrize("small", [False, True], ids=["long-files", "short-files-every-run-native"])
def test_clean_files_never_reach_json_loads(tmp_path, monkeypatch, small):
    if small:  # (a run shorter than MIN_RUN lines is cheaper in Python)
        monkeypatch.setattr(files, "MIN_RUN", 1)
    rng = random.Random(7 + small)
    for n in range(300 if small else 60):
        path = tmp_path / f"c{n}.jsonl"
        path.write_bytes(_file(rng, clean=True, lines=None if small else rng.choice([files.MIN_RUN, 300, 2000])))
        lines = path.read_bytes().count(b"\n") + 1
        before = files.JSONL_LINES.copy()
        got, error = _outcome(files._jsonl_pieces, _source(path), path)
        done = files.JSONL_LINES - before
        assert error is None and done["python"] == 0, (path.read_bytes()[:2000], done)
        assert done["native"] in (lines, lines - 1)  # the empty line after the last \n is no line to read
        _same(path, _source(path))


def test_the_native_reader_splits_around_what_it_cannot_take(tmp_path):
    """A bad line costs only itself: the lines around it are still read natively."""
    good = [
        json.dumps({"station_id": f"B-{i:03d}", "observed_at": "2025-01-01T00:00:00Z", "pm25": i / 10})
        for i in range(900)
    ]
    lines = good[:200] + ['{"station_id": "B-x", "pm25": "n/a"}'] + good[200:400] + ['{"station_id": "B-y", "pm2']
    lines += good[400:] + ['{"station_id": "B-z", "pm25": 1e400}', '{"station_id": "B-w", "pm25": {"v": 1}}', "", " "]
    lines += good[:150]
    path = tmp_path / "air.jsonl"
    path.write_text("\n".join(lines) + "\n")
    before = files.JSONL_LINES.copy()
    ((table, rejected),) = list(files._jsonl_pieces(_source(path), str(path)))
    done = files.JSONL_LINES - before
    assert done["python"] == 6 and done["native"] == len(lines) - 6, done  # (6: with the empty line)
    assert table.num_rows == len(lines) - 3 and [r.location for r in rejected] == [f"{path}:402"]
    pm25 = table.column("pm25").to_pylist()
    assert pm25[200] == "n/a" and pm25[-152:-150] == ["inf", '{"v": 1}']
    assert table.column(files.LOCATION).to_pylist()[400:402] == [f"{path}:401", f"{path}:403"]
    _same(path, _source(path))


def test_other_encodings_and_non_utf8_bytes_read_as_before(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"name": "Café", "n": 1.0}\n{"name": "Crème"}\n'.encode("latin-1"))
    _same(path, _source(path, "latin-1"))
    _same(path, _source(path))  # not UTF-8: refused with where it stops being text, as before
    got, error = _outcome(files._jsonl_pieces, _source(path), path)
    assert got is None and error[0] == "UnreadableFile" and "line 1" in error[1]


def test_float_text_matches_python_on_many_values():
    """pyarrow's own float-to-text is used only where it writes what Python writes."""
    rng = random.Random(3)
    values = [_float(rng) for _ in range(50_000)] + [1e-05, 9.999e-05, 1e-4, 1e16, 1e16 + 2, 123456789012345.6]
    values = [v for v in values if not (v.is_integer() and abs(v) >= 2**53)]
    text = files._text_column(pa.chunked_array([pa.array(values + [None], pa.float64())]))
    want = [str(int(v)) if v.is_integer() else str(v) for v in values] + [None]
    assert text.to_pylist() == want


@pytest.mark.parametrize(
    "lines",
    [
        ['{"a": 1}{"a": 2}', "", '{"a": 3}'],
        ['{"a": 1} {"a": 2}', "  ", '{"a": 3}', "\t"],
        ['{"a": 1}', '{"a": 2} {"b": 2}', " ", '{"a": 3}'],
        ['{"a": 1, "b": "x', 'y"}'],
        ['{"a": {"b": 1}', '{"c": 2}}'],
    ],
)
def test_lines_and_rows_never_drift_apart(tmp_path, lines):
    """Two objects on one line and a blank line elsewhere: as many rows as lines, yet not one per line."""
    path = tmp_path / "drift.jsonl"
    path.write_text("\n".join(lines) + "\n")
    _same(path, _source(path))
