"""Hostile and broken input, each loaded for real through the files connector and ingest (or city.yaml's
loader): the rows that can be read land in bronze, each bad one is in quarantine with its file, row and
reason, or the whole file is refused with a reason saying what to fix; nothing is half-written and a
rerun never duplicates. The corpus is tests/hostile/ (its README lists what each file is and the outcome).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestration import lake
from orchestration.config import ConfigError, load_config
from orchestration.connectors import files
from orchestration.connectors.http_json import SourceUnavailable
from tests.conftest import REPO
from tests.connectors_support import bronze_rows, city_yaml, one_source, quarantine_rows, run, version
from tests.test_listen import _listener, _publish, broker  # noqa: F401 - broker is a fixture

CORPUS = REPO / "tests" / "hostile"


def _load(tmp_path: Path, names: list[str], fmt: str, pk: list[str], **extra):
    """The corpus files `names` in a drop folder, loaded once by a `files` source; (cfg, source, result)."""
    drop = tmp_path / "drop"
    drop.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(CORPUS / name, drop / name)
    spec = {"kind": "files", "path": str(drop / f"*.{fmt}"), "format": fmt, "primary_key": pk, **extra}
    cfg, src = one_source(tmp_path, "agency", "drop", spec)
    return cfg, src, run(cfg, src)


def _table_version(cfg, src) -> int:
    dt_ = lake.open_table(lake.bronze_uri(cfg, src.agency, src.name))
    return -1 if dt_ is None else dt_.version()


def _rerun_changes_nothing(cfg, src) -> None:
    """A second load of the same files reads nothing, commits nothing and adds no quarantine row."""
    before = (_table_version(cfg, src), bronze_rows(cfg, src), len(quarantine_rows(cfg, src)))
    again = run(cfg, src, "run-2")
    assert again.rows_written == 0 and again.quarantined == 0
    assert (_table_version(cfg, src), bronze_rows(cfg, src), len(quarantine_rows(cfg, src))) == before


def _data(rows: list[dict], *columns: str) -> list[tuple]:
    return [tuple(r[c] for c in columns) for r in rows]


def _quarantined(cfg, src) -> list[tuple[str, str]]:
    """(location relative to the drop folder, reason) of every quarantine row, sorted."""
    return sorted((Path(q["location"]).name, q["reason"]) for q in quarantine_rows(cfg, src))


# --- CSV ----------------------------------------------------------------------------------------------


def test_ragged_rows_are_quarantined_with_their_row_number(tmp_path):
    cfg, src, result = _load(tmp_path, ["ragged_rows.csv"], "csv", ["meter", "month"])
    assert _data(bronze_rows(cfg, src), "meter", "kwh", "note") == [("m1", "10.5", "ok"), ("m4", "9", "fine")]
    assert _quarantined(cfg, src) == [
        ("ragged_rows.csv:3", "expected 4 fields, got 3"),
        ("ragged_rows.csv:4", "expected 4 fields, got 5"),
    ]
    assert {q["record"] for q in quarantine_rows(cfg, src)} == {"m2,2025-01,7", "m3,2025-01,8,x,extra"}
    assert result.rows_read == 4 and result.rows_written == 2 and result.quarantined == 2
    _rerun_changes_nothing(cfg, src)


def test_a_quote_left_open_quarantines_the_record_that_swallowed_the_file(tmp_path):
    """A quote inside a value is kept as text; a quote opening a value and never closed would make the
    rest of the file that value (m4 would vanish into m3's note): m3 is quarantined instead, naming why."""
    cfg, src, _ = _load(tmp_path, ["stray_quotes.csv"], "csv", ["meter", "month"])
    assert _data(bronze_rows(cfg, src), "meter", "note") == [("m1", 'a "quoted" word'), ("m2", "closed, with comma")]
    ((location, reason),) = _quarantined(cfg, src)
    assert location == "stray_quotes.csv:4" and reason.startswith("a quote opened in this record is never closed")
    (q,) = quarantine_rows(cfg, src)
    # the swallowed row is kept in the record, not lost
    assert json.loads(q["record"])["note"] == "never closed\nm4,2025-01,4,swallowed"
    _rerun_changes_nothing(cfg, src)


def test_a_quote_open_for_more_than_a_block_refuses_the_file_and_writes_none_of_it(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_text("meter,month,kwh\nm1,2025-01,1\n")
    cfg, src = one_source(
        tmp_path,
        "agency",
        "drop",
        {"kind": "files", "path": str(drop / "*.csv"), "format": "csv", "primary_key": ["meter"]},
    )
    run(cfg, src)
    v = version(cfg, src)
    lines = "".join(f"m{i},2025-01,{i}\n" for i in range(3, 200_000))
    (drop / "b.csv").write_text(f'meter,month,kwh\nm2,2025-01,"2\n{lines}')
    result = run(cfg, src, "run-2")
    assert version(cfg, src) == v and _data(bronze_rows(cfg, src), "meter") == [("m1",)]
    (q,) = quarantine_rows(cfg, src)
    assert q["location"].endswith("b.csv") and "(a quote left open?)" in q["reason"] and q["_file_done"]
    assert result.files_loaded == [str(drop / "b.csv")]
    _rerun_changes_nothing(cfg, src)


def test_a_wrong_delimiter_refuses_the_file_naming_the_delimiter_and_fixing_it_reads_it_again(tmp_path):
    cfg, src, _ = _load(tmp_path, ["semicolon_delimited.csv"], "csv", ["meter", "month"])
    assert bronze_rows(cfg, src) == []
    ((location, reason),) = _quarantined(cfg, src)
    assert location == "semicolon_delimited.csv"
    assert reason == (
        "no primary key column 'meter', 'month' in the header ('meter;month;kwh'); the header is one column "
        "holding ';': is the file ';'-separated? set delimiter: ';'"
    )
    _rerun_changes_nothing(cfg, src)
    # the fix is in city.yaml: a file refused whole is read again when the source reads files differently
    fixed = yaml.safe_load(cfg.path.read_text())
    fixed["agencies"]["agency"]["drop"]["delimiter"] = ";"
    cfg.path.write_text(yaml.safe_dump(fixed))
    cfg2 = load_config(cfg.path)
    src2 = cfg2.source("agency/drop")
    run(cfg2, src2, "run-3")
    assert _data(bronze_rows(cfg2, src2), "meter", "kwh") == [("m1", "10,5"), ("m2", "7")]


@pytest.mark.parametrize(
    ("name", "encoding", "note"),
    [
        ("latin1.csv", "latin-1", "Café crème"),
        ("cp1252.csv", "cp1252", "€ 5 \u201cquoted\u201d"),
    ],
)
def test_a_file_not_in_the_configured_encoding_names_the_line_and_the_byte(tmp_path, name, encoding, note):
    cfg, src, _ = _load(tmp_path / "default", [name], "csv", ["meter", "month"])
    assert bronze_rows(cfg, src) == []
    ((location, reason),) = _quarantined(cfg, src)
    byte = {"latin1.csv": "0xe9", "cp1252.csv": "0x80"}[name]
    assert location == name and reason.startswith(f"not utf-8 text: line 2 has byte {byte}")
    assert reason.endswith("set encoding: (e.g. latin-1 or cp1252)")
    _rerun_changes_nothing(cfg, src)
    cfg, src, _ = _load(tmp_path / "declared", [name], "csv", ["meter", "month"], encoding=encoding)
    assert _data(bronze_rows(cfg, src), "meter", "note") == [("m1", note), ("m2", "plain")]
    assert quarantine_rows(cfg, src) == []


@pytest.mark.parametrize("encoding", [None, "utf-8", "UTF8"])
def test_a_utf8_bom_never_becomes_part_of_the_first_column_name(tmp_path, encoding):
    extra = {"encoding": encoding} if encoding else {}
    cfg, src, _ = _load(tmp_path, ["utf8_bom.csv"], "csv", ["meter", "month"], **extra)
    assert _data(bronze_rows(cfg, src), "meter", "kwh") == [("m1", "1"), ("m2", "2")]
    assert "\ufeffmeter" not in lake.schema(lake.bronze_uri(cfg, "agency", "drop")).names


def test_an_empty_file_is_refused_once_and_a_header_only_file_lands_no_row(tmp_path):
    cfg, src, result = _load(tmp_path, ["empty.csv", "header_only.csv"], "csv", ["meter"])
    assert bronze_rows(cfg, src) == [] and result.rows_written == 0
    assert _quarantined(cfg, src) == [("empty.csv", "empty file: no header line and no rows")]
    _rerun_changes_nothing(cfg, src)


def test_a_header_naming_a_column_twice_is_refused_and_an_unnamed_column_is_numbered(tmp_path):
    cfg, src, _ = _load(tmp_path, ["duplicate_header.csv", "blank_header_cell.csv"], "csv", ["meter", "month"])
    assert _quarantined(cfg, src) == [
        (
            "duplicate_header.csv",
            "the header names column 'kwh' twice (columns 3 and 4); rename one so each column can be told apart",
        )
    ]
    assert _data(bronze_rows(cfg, src), "meter", "column4") == [("m1", None), ("m2", "x")]
    _rerun_changes_nothing(cfg, src)


def test_missing_and_repeated_keys_are_quarantined_with_their_rows(tmp_path):
    cfg, src, _ = _load(tmp_path, ["missing_and_repeated_keys.csv"], "csv", ["meter", "month"])
    assert _data(bronze_rows(cfg, src), "meter", "month", "kwh") == [("m1", "2025-01", "1"), ("m2", "2025-01", "5")]
    assert _quarantined(cfg, src) == [
        ("missing_and_repeated_keys.csv:3", "failed expect_column_values_to_not_be_null(meter)"),
        ("missing_and_repeated_keys.csv:4", "duplicate primary key m1|2025-01 in one load (first kept)"),
        ("missing_and_repeated_keys.csv:5", "failed expect_column_values_to_not_be_null(month)"),
    ]
    _rerun_changes_nothing(cfg, src)


def test_repeated_keys_across_the_pieces_of_a_big_file_are_found(tmp_path, monkeypatch):
    """A file is checked a piece at a time: a key repeated 150 000 rows later, in another piece, is still
    a repeat (the first kept), named by its row."""
    monkeypatch.setattr(files, "PIECE_ROWS", 10_000)
    drop = tmp_path / "drop"
    drop.mkdir()
    body = "".join(f"k{i},{i}\n" for i in range(150_000))
    (drop / "a.csv").write_text(f"id,v\n{body}k7,again\nk149999,again\n")
    cfg, src = one_source(
        tmp_path,
        "agency",
        "drop",
        {"kind": "files", "path": str(drop / "*.csv"), "format": "csv", "primary_key": ["id"]},
    )
    result = run(cfg, src)
    assert result.row_count == 150_000 and result.versions_committed == 1
    assert _quarantined(cfg, src) == [
        ("a.csv:150002", "duplicate primary key k7 in one load (first kept)"),
        ("a.csv:150003", "duplicate primary key k149999 in one load (first kept)"),
    ]
    assert lake.read_table(lake.bronze_uri(cfg, "agency", "drop"), columns=["v"]).column("v")[7].as_py() == "7"


def test_a_file_unreadable_part_way_writes_none_of_its_rows(tmp_path, monkeypatch):
    """Bad UTF-8 near the end of a file read in pieces: its first pieces were fine, but none of its rows
    reach bronze (one commit per file, made only when the whole file was read), and the reason names the line."""
    monkeypatch.setattr(files, "PIECE_ROWS", 1_000)
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_text("id,v\nok,1\n")
    cfg, src = one_source(
        tmp_path,
        "agency",
        "drop",
        {"kind": "files", "path": str(drop / "*.csv"), "format": "csv", "primary_key": ["id"]},
    )
    run(cfg, src)
    v = version(cfg, src)
    body = "".join(f"k{i},{i}\n" for i in range(300_000)).encode()  # 3.7 MB: several pieces, spilled
    (drop / "b.csv").write_bytes(b"id,v\n" + body + b"bad,\xff\n")
    result = run(cfg, src, "run-2")
    assert version(cfg, src) == v and _data(bronze_rows(cfg, src), "id") == [("ok",)]
    ((location, reason),) = _quarantined(cfg, src)
    assert location == "b.csv" and reason.startswith("not utf-8 text: line 300002 has byte 0xff")
    # its pieces were spilled, and the spill is gone
    assert result.files_loaded == [str(drop / "b.csv")] and list((cfg.state_dir / "spill").iterdir()) == []
    _rerun_changes_nothing(cfg, src)


def test_a_file_changed_while_it_is_read_is_left_for_the_next_run(tmp_path, monkeypatch):
    """The agency is still writing the file: it grows after its checksum was taken. Nothing of it is
    loaded or quarantined this time; the next run loads the whole file."""
    drop = tmp_path / "drop"
    drop.mkdir()
    target = drop / "a.csv"
    target.write_text("id,v\nk1,1\n")
    real = files._csv_pieces

    def pieces_while_the_agency_writes(source, path):
        with open(path, "a") as f:
            f.write("k2,2\n")
        yield from real(source, path)

    monkeypatch.setattr(files, "_csv_pieces", pieces_while_the_agency_writes)
    cfg, src = one_source(
        tmp_path,
        "agency",
        "drop",
        {"kind": "files", "path": str(drop / "*.csv"), "format": "csv", "primary_key": ["id"]},
    )
    result = run(cfg, src)
    assert result.files_loaded == [] and bronze_rows(cfg, src) == [] and quarantine_rows(cfg, src) == []
    monkeypatch.setattr(files, "_csv_pieces", real)
    run(cfg, src, "run-2")
    assert _data(bronze_rows(cfg, src), "id", "v") == [("k1", "1"), ("k2", "2")]


def test_file_names_with_quotes_and_backslashes_are_replaced_exactly(tmp_path):
    """A file's rows are replaced by a predicate on its path: quotes in a name cannot widen it."""
    drop = tmp_path / "drop"
    drop.mkdir()
    hostile = ["it's'; delete from x; --.csv", "a\\b.csv", "' or '1'='1.csv"]
    for i, name in enumerate(hostile):
        (drop / name).write_text(f"id,v\nk{i},first\n")
    cfg, src = one_source(
        tmp_path,
        "agency",
        "drop",
        {"kind": "files", "path": str(drop / "*.csv"), "format": "csv", "primary_key": ["id"]},
    )
    run(cfg, src)
    (drop / hostile[2]).write_text("id,v\nk2,second\n")
    run(cfg, src, "run-2")
    assert _data(bronze_rows(cfg, src), "id", "v", "_source_file") == [
        ("k0", "first", str(drop / hostile[0])),
        ("k1", "first", str(drop / hostile[1])),
        ("k2", "second", str(drop / hostile[2])),
    ]


# --- JSON, JSON lines, other formats ---------------------------------------------------------------------


def test_json_lines_of_the_wrong_type_or_not_json_are_quarantined_by_line(tmp_path):
    cfg, src, _ = _load(tmp_path, ["wrong_types.jsonl"], "jsonl", ["sensor"])
    rows = {r["sensor"]: r for r in bronze_rows(cfg, src)}
    # values of any JSON type land as text; nested values as JSON
    assert rows["s1"]["pm25"] == "12.5" and rows["s1"]["ok"] == "true" and rows["s1"]["none"] is None
    assert rows["s1"]["tags"] == '["a", "b"]' and rows["s1"]["meta"] == '{"k": 1}'
    assert rows["42"]["pm25"] == "high" and sorted(rows) == ["42", "s1", "s5"]
    assert _quarantined(cfg, src) == [
        ("wrong_types.jsonl:3", "a JSON line must be an object"),
        ("wrong_types.jsonl:4", "a JSON line must be an object"),
        ("wrong_types.jsonl:5", "a JSON line must be an object"),
        ("wrong_types.jsonl:6", "a JSON line must be an object"),
        ("wrong_types.jsonl:7", "not valid JSON: Expecting property name enclosed in double quotes at column 28"),
    ]
    _rerun_changes_nothing(cfg, src)


def test_json_nested_ten_thousand_levels_is_quarantined_not_a_crash(tmp_path):
    cfg, src, _ = _load(tmp_path / "lines", ["deep_nesting.jsonl"], "jsonl", ["sensor"])
    assert _data(bronze_rows(cfg, src), "sensor", "pm25") == [("ok1", "1"), ("ok2", "2")]
    assert _quarantined(cfg, src) == [
        ("deep_nesting.jsonl:2", "nested too deeply to read (JSON nested more than about 900 levels)")
    ]
    _rerun_changes_nothing(cfg, src)
    cfg, src, _ = _load(tmp_path / "document", ["deep_nesting.json"], "json", ["sensor"], records_path="items")
    assert bronze_rows(cfg, src) == []
    assert _quarantined(cfg, src) == [
        ("deep_nesting.json", "nested too deeply to read (JSON nested more than about 900 levels)")
    ]
    _rerun_changes_nothing(cfg, src)


def test_a_number_python_cannot_read_and_unicode_line_separators(tmp_path):
    """A 5000-digit number is one bad line, not a crash; U+2028, U+2029 and U+0085 inside a JSON string
    do not split its line (they used to: str.splitlines broke the record in three)."""
    cfg, src, _ = _load(tmp_path, ["huge_number.jsonl", "line_separators.jsonl"], "jsonl", ["sensor"])
    assert _data(bronze_rows(cfg, src), "sensor", "note", "pm25") == [
        ("ok", None, "3"),
        ("plain", "x", None),
        ("u2028", "a\u2028b\u2029c\u0085d", None),
    ]
    assert _quarantined(cfg, src) == [("huge_number.jsonl:1", "not readable JSON: a number of more than 4300 digits")]
    _rerun_changes_nothing(cfg, src)


@pytest.mark.parametrize(
    ("name", "fmt", "reason"),
    [
        ("not_a_workbook.xlsx", "xlsx", "file could not be parsed as xlsx: BadZipFile: File is not a zip file"),
        ("truncated.parquet", "parquet", "file could not be parsed as parquet: ArrowInvalid: Parquet magic bytes"),
    ],
)
def test_a_file_that_is_not_its_format_is_refused_once(tmp_path, name, fmt, reason):
    cfg, src, _ = _load(tmp_path, [name], fmt, ["route"])
    ((location, got),) = _quarantined(cfg, src)
    assert location == name and got.startswith(reason)
    assert quarantine_rows(cfg, src)[0]["_file_done"] is True
    _rerun_changes_nothing(cfg, src)


def test_a_json_document_over_max_document_mb_is_refused_not_parsed(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "big.json").write_text(json.dumps({"items": [{"id": str(i), "pad": "x" * 100} for i in range(12_000)]}))
    cfg, src = one_source(
        tmp_path,
        "agency",
        "drop",
        {
            "kind": "files",
            "path": str(drop / "*.json"),
            "format": "json",
            "records_path": "items",
            "primary_key": ["id"],
            "max_document_mb": 1,
        },
    )
    run(cfg, src)
    ((location, reason),) = _quarantined(cfg, src)
    assert location == "big.json" and reason.startswith("a JSON document of 1 MB is parsed whole and max_document_mb")


# --- out-of-range values: not for ingest to judge, but never dropped ---------------------------------------


def test_timestamps_far_in_the_future_or_before_1900_and_nan_infinity_land_as_received(tmp_path):
    """Bronze keeps what the agency sent; the staging models judge the values. Nothing is dropped."""
    cfg, src, _ = _load(tmp_path / "ts", ["out_of_range_timestamps.csv"], "csv", ["meter"])
    assert _data(bronze_rows(cfg, src), "meter", "observed_at") == [
        ("before1900", "1850-06-01T12:00:00Z"),
        ("duckdb_max_wall_time", "294247-01-10 04:00:54"),
        ("future", "2999-01-01T00:00:00Z"),
        ("year1", "0001-01-01T00:00:00Z"),
        ("year9999", "9999-12-31T23:59:59Z"),
    ]
    cfg, src, _ = _load(tmp_path / "csv", ["nan_infinity.csv"], "csv", ["meter"])
    assert _data(bronze_rows(cfg, src), "meter", "kwh") == [
        ("inf", "Infinity"),
        ("lower", "nan"),
        ("nan", "NaN"),
        ("neginf", "-inf"),
    ]
    cfg, src, _ = _load(tmp_path / "jsonl", ["nan_infinity.jsonl"], "jsonl", ["sensor"])
    # bare NaN / Infinity are not JSON, but Python's reader takes them: they land as Python spells them
    assert _data(bronze_rows(cfg, src), "sensor", "pm25") == [
        ("a", "nan"),
        ("b", "inf"),
        ("c", "-inf"),
        ("d", "NaN"),
        ("e", "inf"),
    ]
    assert quarantine_rows(cfg, src) == []


# --- where files may come from ------------------------------------------------------------------------------


def test_a_symlink_out_of_the_drop_folder_is_refused_before_anything_is_loaded(tmp_path):
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    drop.mkdir()
    outside.mkdir()
    (outside / "secret.csv").write_text("id,v\nsecret,1\n")
    (drop / "a.csv").write_text("id,v\nk1,1\n")
    (drop / "b.csv").symlink_to(outside / "secret.csv")
    cfg, src = one_source(
        tmp_path,
        "agency",
        "drop",
        {"kind": "files", "path": str(drop / "*.csv"), "format": "csv", "primary_key": ["id"]},
    )
    with pytest.raises(files.OutsideFolder) as err:
        run(cfg, src)
    assert str(err.value) == (
        f"agencies.agency.drop.path: {drop / 'b.csv'} resolves to {outside / 'secret.csv'}, outside {drop}, "
        "the folder the glob names; citylake does not follow links out of a drop folder: copy the file in, "
        "or point path: at the folder it is really in"
    )
    assert lake.open_table(lake.bronze_uri(cfg, "agency", "drop")) is None  # a.csv was not loaded either
    # a link that stays inside the folder is an ordinary file
    (drop / "b.csv").unlink()
    (drop / "sub").mkdir()
    (drop / "sub" / "c.csv").write_text("id,v\nk3,3\n")
    (drop / "c.csv").symlink_to(drop / "sub" / "c.csv")
    run(cfg, src)
    assert _data(bronze_rows(cfg, src), "id") == [("k1",), ("k3",)]


def test_double_star_does_not_follow_symlinked_folders(tmp_path):
    """Python's glob follows them: a link to `..` made every file appear forty times, two such links
    never finished, and a link to /etc reached outside the folder."""
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    (drop / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.csv").write_text("id,v\nsecret,1\n")
    (drop / "sub" / "a.csv").write_text("id,v\nk1,1\n")
    (drop / "sub" / "loop").symlink_to(drop)
    (drop / "sub" / "loop2").symlink_to(drop / "sub")
    (drop / "away").symlink_to(outside)
    cfg, src = one_source(
        tmp_path,
        "agency",
        "drop",
        {"kind": "files", "path": str(drop / "**" / "*.csv"), "format": "csv", "primary_key": ["id"]},
    )
    assert files.list_files(src) == [str(drop / "sub" / "a.csv")]
    run(cfg, src)
    assert _data(bronze_rows(cfg, src), "id", "_source_file") == [("k1", str(drop / "sub" / "a.csv"))]


# --- city.yaml attacks ----------------------------------------------------------------------------------------


def _city(tmp_path: Path, **source) -> Path:
    spec = {"kind": "files", "path": "./drop/*.csv", "format": "csv", "primary_key": ["id"], **source}
    if spec["kind"] != "files":
        del spec["format"]  # only files sources take it: an unknown key on any other kind
    return city_yaml(tmp_path, {"energy": {"meters": spec}})


def _in_a_subprocess(config: Path) -> subprocess.CompletedProcess:
    """load_config in a child limited to 1 GiB of address space and 60 s: a bomb that hangs or eats memory fails."""
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from orchestration.config import ConfigError, load_config\n"
        "try:\n    load_config(sys.argv[1])\nexcept ConfigError as e:\n    print('ConfigError:', e)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(config)], check=False, capture_output=True, text=True, timeout=60, cwd=REPO
    )


@pytest.mark.parametrize("where", ["an unused key", "city.name", "a merge key"])
def test_a_yaml_alias_bomb_fails_fast_with_a_config_error(tmp_path, where):
    """A billion laughs: nine levels of nine aliases are 387 million values once expanded (PyYAML shares
    them, so loading is quick; building the name string from them never ends)."""
    config = city_yaml(
        tmp_path, {"energy": {"meters": {"kind": "files", "path": "./d/*.csv", "format": "csv", "primary_key": ["id"]}}}
    )
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    if where == "a merge key":
        levels = ["m0: &m0 {k: v}"] + [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: v}}" for i in range(1, 40)]
    text = config.read_text()
    if where == "city.name":
        text = text.replace("name: Testville", "name: *a8")
    config.write_text("\n".join(levels) + "\n" + text)
    proc = _in_a_subprocess(config)
    assert proc.returncode == 0, proc.stderr
    assert "values once anchors and aliases are expanded (an alias bomb?)" in proc.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x: " + "[" * 5000 + "]" * 5000, "nested deeper than 64 levels"),
        ("x: " + "{a: " * 100 + "1" + "}" * 100, "nested deeper than 64 levels"),
        ("x: &a [*a]", "an alias refers to a node that contains it"),
        ("x: 2025-13-45", "cannot read this value: month must be in 1..12"),
        ("x: " + "9" * 5000, "cannot read this value: Exceeds the limit"),
        ("city: {name: Twice, timezone: UTC}", "key 'city' appears twice in one mapping (first on line 1)"),
        ("x: !!python/object/apply:os.system ['echo pwned']", "could not determine a constructor"),
    ],
)
def test_a_city_yaml_too_deep_self_referencing_or_with_a_key_twice_is_refused(tmp_path, text, message):
    config = _city(tmp_path)
    config.write_text(config.read_text() + text + "\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(config)


def test_a_city_yaml_over_one_megabyte_or_not_utf8_is_refused(tmp_path):
    config = _city(tmp_path)
    config.write_text(config.read_text() + "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="a city.yaml is at most 1048576 bytes"):
        load_config(config)
    config.write_bytes(_city(tmp_path).read_bytes().replace(b"Testville", b"Caf\xe9ville"))
    with pytest.raises(ConfigError, match=r"line 2: not UTF-8 text \(byte 0xe9\); save it as UTF-8"):
        load_config(config)


NAME_RULE = "lower_snake_case: a letter, then letters, digits and _ (at most 63 characters, no '__')"


@pytest.mark.parametrize(
    "name",
    ['transport"; drop table x; --', "trans port", "trans.port", "..", "transport\n", "Transport", "a__b", "a" * 64],
)
def test_agency_and_source_names_that_would_break_an_identifier_are_refused(tmp_path, name):
    spec = {"kind": "files", "path": "./d/*.csv", "format": "csv", "primary_key": ["id"]}
    with pytest.raises(ConfigError) as err:
        load_config(city_yaml(tmp_path / "agency", {name: {"meters": spec}}))
    assert str(err.value).startswith("agencies: an agency name is " + NAME_RULE)
    with pytest.raises(ConfigError) as err:
        load_config(city_yaml(tmp_path / "source", {"energy": {name: spec}}))
    assert str(err.value).startswith(f"agencies.energy.{name}: a source name is {NAME_RULE}")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"primary_key": ['id"; drop table x; --']}, "agencies.energy.meters.primary_key: a column name: 1 to 256"),
        ({"primary_key": ["id`"]}, "agencies.energy.meters.primary_key: a column name"),
        ({"primary_key": ["{{ env_var('HOME') }}"]}, "agencies.energy.meters.primary_key: a column name"),
        ({"freshness": {"column": "t\n", "max_delay_hours": 2}}, "agencies.energy.meters.freshness.column: a column"),
        ({"kind": "sqlite", "path": "./t.sqlite", "table": "rides; drop table rides"}, "meters.table: [schema.]table"),
        ({"kind": "sqlite", "path": "./t.sqlite", "table": 'a"b'}, "agencies.energy.meters.table: [schema.]table"),
        ({"kind": "sqlite", "path": "./t.sqlite", "query": "select 1; drop table rides"}, "query: one statement only"),
        ({"kind": "sqlite", "path": "./t.sqlite", "query": "drop table rides"}, "query: a query reads: it starts"),
        ({"kind": "sqlite", "path": "./t.sqlite", "table": "t", "cursor": "u`pdated"}, "meters.cursor: a column name"),
        ({"path": "./landing/*/../../../etc/passwd"}, "meters.path: '..' after a wildcard lets the glob reach outside"),
        ({"path": "./drop/\x00.csv"}, "agencies.energy.meters.path: holds a NUL character"),
        ({"delimiter": ";;"}, "agencies.energy.meters.delimiter: one character"),
        ({"encoding": "rot13"}, "agencies.energy.meters.encoding: 'rot13' is not a text encoding"),
        (
            {"kind": "sqlite", "path": "./t.sqlite", "table": "t", "batch_rows": 10**30},
            "agencies.energy.meters.batch_rows: a whole number from 1 to 10 000 000",
        ),
        ({"schedule": "every day"}, "agencies.energy.meters.schedule: 'every day' is not a cron string"),
        ({"feeds": ["energy_consumption"]}, "agencies.energy.meters.feeds: list ['energy_consumption'] is not"),
    ],
)
def test_identifiers_queries_and_values_that_try_injection_are_refused_naming_the_key(tmp_path, source, message):
    with pytest.raises(ConfigError) as err:
        load_config(_city(tmp_path, **source))
    assert message in str(err.value)


EXPRESSIONS_REFUSED = [
    ("(select password from users)", "holds a subquery"),
    ("exists(select 1)", "holds a subquery"),
    ("kwh; drop table x", "is not one SQL expression (syntax error"),
    ("kwh) as kwh, (select 1", "is not one SQL expression (syntax error"),
    ("kwh -- the rest of the model", "is not one SQL expression (syntax error"),
    ("read_csv('/etc/passwd')", "calls read_csv(), which an expression in city.yaml may not use"),
    ("current_setting('s3_secret_access_key')", "calls current_setting(), which"),
    ("{{ env_var('CITYLAKE_PG_DSN') }}", "holds a dbt template delimiter"),
    ("$1", "holds a query parameter"),
]


@pytest.mark.parametrize(("expression", "problem"), EXPRESSIONS_REFUSED)
def test_a_column_mapping_must_be_one_scalar_expression_over_the_source(tmp_path, expression, problem):
    """`columns:`, `district:` and `population_format.code` values are SQL over the source's own row:
    parsed by DuckDB as `cast(<value> as varchar)`, anything more is refused."""
    columns = {"meter_id": "meter", "period_start": "month", "kwh": expression}
    with pytest.raises(ConfigError) as err:
        load_config(_city(tmp_path / "columns", feeds="energy_consumption", columns=columns))
    assert str(err.value).startswith(f"agencies.energy.meters.columns.kwh: {expression!r} {problem}")
    columns["kwh"] = "kwh"
    with pytest.raises(ConfigError) as err:
        load_config(
            _city(
                tmp_path / "district",
                feeds="energy_consumption",
                columns=columns,
                district={"from": "code", "column": expression},
            )
        )
    assert str(err.value).startswith(f"agencies.energy.meters.district.column: {expression!r} {problem}")


def test_real_mappings_stay_valid(tmp_path):
    """What real cities write (NYC's mappings, the reference city's) is accepted."""
    columns = {
        "meter_id": "Unique Key",
        "period_start": "try_strptime(\"Created Date\", '%m/%d/%Y %H:%M')",
        "kwh": "coalesce(REFUSETONSCOLLECTED, '0')",
    }
    district = {"from": "code", "column": "case BOROUGH when 'Bronx' then '2' end || lpad(\"CD Number\", 2, '0')"}
    cfg = load_config(
        _city(
            tmp_path,
            feeds="energy_consumption",
            columns=columns,
            district=district,
            primary_key=["Unique Key", "County Code"],
        )
    )
    assert cfg.source("energy/meters").columns == columns
    assert load_config(REPO / "cities" / "nyc" / "city.yaml").source("nyc311/animal_complaints").primary_key == (
        "Unique Key",
    )


def test_a_glob_may_name_a_folder_outside_the_config_before_its_wildcard(tmp_path):
    """`..` before the first wildcard is the folder the config declares (NYC's ../../../shared/data/nyc);
    after a wildcard it would let the glob reach folders the config never named."""
    cfg = load_config(_city(tmp_path / "city", path="../shared/*.csv"))
    assert cfg.source("energy/meters").local_path() == str(tmp_path / "shared" / "*.csv")


# --- a big file, bounded memory ---------------------------------------------------------------------------------

GIB = 1 << 30


def _write_big_csv(path: Path, size: int) -> int:
    """A CSV of about `size` bytes, fast: fixed-width lines made in blocks with numpy, ids 0..n-1; then a
    repeat of id 0 (the first piece's key, in the last piece) and a ragged row. Returns the valid rows."""
    line = b"0000000000,s042,2025-01-01T00:00:00Z,12.5," + b"n" * 340 + b"\n"
    block = 50_000
    template = np.tile(np.frombuffer(line, np.uint8), (block, 1))
    rows = 0
    with open(path, "wb") as f:
        f.write(b"id,sensor,observed_at,value,note\n")
        while rows * len(line) < size:
            ids = np.arange(rows, rows + block)
            for d in range(10):
                template[:, 9 - d] = 48 + (ids // 10**d) % 10
            f.write(template.tobytes())
            rows += block
        f.write(line.replace(b"n" * 340, b"again"))
        f.write(b"ragged,row\n")
    return rows


@pytest.mark.skipif(shutil.disk_usage("/tmp").free < 8 * GIB, reason="needs 8 GB free disk for a 2 GB CSV")
def test_a_2gb_csv_loads_through_citylake_run_in_one_commit_with_bounded_memory(tmp_path):
    """~5.6 million rows of 385 bytes through `citylake run --select bronze/energy/big` (ingest and the
    bronze gate), in a child whose peak RSS is measured: it stays under 1.5 GiB, a quarter of the file
    as pandas objects would not. One Delta commit holds the file; the two bad rows are in quarantine."""
    data = tmp_path / "big.csv"
    try:
        n = _write_big_csv(data, 2 * GIB)
        config = city_yaml(
            tmp_path / "city",
            {"energy": {"big": {"kind": "files", "path": str(data), "format": "csv", "primary_key": ["id"]}}},
        )
        # a fresh interpreter runs the conftest helper, so RUSAGE_CHILDREN is this run's alone
        measure = (
            "import resource, sys; from pathlib import Path; from tests.conftest import citylake; "
            "citylake('run', '--select', 'bronze/energy/big', config=Path(sys.argv[1]), timeout=900); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        proc = subprocess.run(
            [sys.executable, "-c", measure, str(config)],
            check=False,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=1000,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        peak = int(proc.stdout.split()[-1]) * 1024
        cfg = load_config(config)
        bronze = lake.open_table(lake.bronze_uri(cfg, "energy", "big"))
        assert bronze.to_pyarrow_dataset().count_rows() == n and bronze.version() == 0
        src = cfg.source("energy/big")
        assert _quarantined(cfg, src) == [
            (f"big.csv:{n + 2}", "duplicate primary key 0000000000 in one load (first kept)"),
            (f"big.csv:{n + 3}", "expected 5 fields, got 2"),
        ]
        print(f"{data.stat().st_size / GIB:.2f} GiB CSV, {n} rows: peak RSS {peak / GIB:.2f} GiB")
        assert peak < 1.5 * GIB, f"peak RSS {peak / GIB:.2f} GiB"
    finally:
        data.unlink(missing_ok=True)


# --- MQTT: a poison message ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("broker")
def test_a_poison_mqtt_payload_neither_stops_the_listener_nor_the_load(tmp_path):
    """JSON nested 10 000 levels, or a 5000-digit number, used to raise out of the listener's message
    callback (not a JSONDecodeError): that message and every later one were never landed (the listener
    kept running, landing nothing). Now each lands as text and is quarantined at ingestion; the readings
    around it load."""
    prefix = f"citylake-test/{uuid.uuid4().hex[:8]}"
    landing = tmp_path / "landing"
    config = city_yaml(
        tmp_path,
        {
            "environment": {
                "air": {
                    "kind": "mqtt",
                    "url": "mqtt://127.0.0.1:1883",
                    "topic": f"{prefix}/+",
                    "client_id": f"citylake-test-{uuid.uuid4().hex[:8]}",
                    "landing": str(landing),
                    "primary_key": ["sensor_id"],
                }
            }
        },
    )
    listener = _listener(config, "--flush-seconds", "0.5")
    deep = '{"sensor_id": "deep", "v": ' + "[" * 10_000 + "]" * 10_000 + "}"
    huge = '{"sensor_id": "huge", "v": ' + "9" * 5000 + "}"
    _publish(prefix, [("s", '{"sensor_id": "before"}'), ("s", deep), ("s", huge), ("s", '{"sensor_id": "after"}')])
    deadline = time.monotonic() + 20
    while sum(len(p.read_text().splitlines()) for p in landing.glob("*.jsonl")) < 4:
        assert listener.poll() is None, listener.stderr.read()
        assert time.monotonic() < deadline, [p.read_text()[:200] for p in landing.glob("*.jsonl")]
        time.sleep(0.2)
    listener.send_signal(signal.SIGTERM)
    out, _ = listener.communicate(timeout=20)
    assert listener.returncode == 0 and "Landed 4 messages." in out
    cfg = load_config(config)
    src = cfg.source("environment/air")
    run(cfg, src)
    assert _data(bronze_rows(cfg, src), "sensor_id") == [("after",), ("before",)]
    assert sorted(q["record"][:30] for q in quarantine_rows(cfg, src)) == [deep[:30], huge[:30]]
    assert all("is not a JSON object" in q["reason"] for q in quarantine_rows(cfg, src))


class _OneBody(BaseHTTPRequestHandler):
    body = b"{}"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.mark.parametrize(
    ("body", "last"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "a JSON body nested too deeply to read"),
        (b'[{"id": ' + b"9" * 5000 + b"}]", "a truncated or non-JSON body (Exceeds the limit (4300 digits)"),
    ],
)
def test_an_api_answering_json_python_cannot_hold_fails_naming_the_source(tmp_path, body, last):
    """It used to escape as a bare RecursionError / ValueError, naming neither the source nor the URL."""
    handler = type("Handler", (_OneBody,), {"body": body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/records.json"
        spec = {"kind": "http_json", "url": url, "primary_key": ["id"], "max_retries": 0}
        cfg, src = one_source(tmp_path, "agency", "api", spec)
        with pytest.raises(SourceUnavailable) as err:
            run(cfg, src)
        assert str(err.value).startswith(f"agencies.agency.api: {url}") and last in str(err.value)
        assert lake.open_table(lake.bronze_uri(cfg, "agency", "api")) is None
    finally:
        server.shutdown()


# --- and downstream: the staging models hold the values back, each with its reason ---------------------------


def test_hostile_values_are_quarantined_downstream_with_their_reason(tmp_path):
    """NaN, infinity and impossible times land in bronze as received (above); the generated staging models
    hold them back from the facts, each named in quarantine_records, and the run does not break on them."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    import duckdb

    from orchestration.reference_city import generate
    from tests.conftest import TEST_CITY, citylake, write_city_config

    city_dir = tmp_path / "riverton"
    generate(city_dir, **TEST_CITY)  # big enough that its own bad records stay under every gate's `mostly`
    (city_dir / "landing" / "energy" / "hostile.csv").write_text(
        "meter_id,month,kwh,sector,district_code\n"
        "NAN1,2025-03,NaN,residential,D01\nINF1,2025-03,Infinity,residential,D01\nNEG1,2025-03,-inf,residential,D01\n"
    )
    line = {"pm25_ugm3": 9.0, "pm10_ugm3": 12.0, "no2_ugm3": 20.0, "o3_ugm3": 30.0}
    line.update(latitude=38.7, longitude=-90.3)
    times = {"FUTURE": "2999-01-01T00:00:00Z", "OLD": "1850-06-01T12:00:00Z", "HUGE": "294247-01-10 04:00:54"}
    (city_dir / "landing" / "air" / "vendor_b" / "hostile.jsonl").write_text(
        "".join(json.dumps({**line, "station_id": s, "observed_at": t}) + "\n" for s, t in times.items())
    )
    config = write_city_config(tmp_path, city_dir, tmp_path / "lake")
    # the history in the first partition (yesterday), the future in today's: a run over two days
    cfg = yaml.safe_load(config.read_text())
    cfg["partitions"] = {"start": (dt.datetime.now(ZoneInfo("America/Chicago")).date() - dt.timedelta(days=1))}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = citylake("run", config=config, check=False)
    assert "Daily partitions" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    con = duckdb.connect(str(tmp_path / "state" / "warehouse.duckdb"), read_only=True)
    try:
        held = dict(
            con.execute(
                "select split_part(record_key, '|', 1), reject_reason from quarantine_records "
                "where split_part(record_key, '|', 1) in ('NAN1', 'INF1', 'NEG1', 'FUTURE', 'OLD', 'HUGE')"
            ).fetchall()
        )
        facts = (
            con.execute(
                "select count(*) from fct_energy_consumption where meter_id in ('NAN1', 'INF1', 'NEG1')"
            ).fetchone()[0]
            + con.execute(
                "select count(*) from fct_air_quality_observations where station_id in ('FUTURE', 'OLD', 'HUGE')"
            ).fetchone()[0]
        )
    finally:
        con.close()
    assert facts == 0
    assert held["NAN1"] == held["INF1"] == held["NEG1"] == "kwh is not a finite number"
    assert held["FUTURE"] == "observed_at 2998-12-31 is in the future"  # midnight UTC is the evening before in Chicago
    assert held["OLD"] == "observed_at 1850-06-01 is before 1900"
    # a wall time at DuckDB's limit never reaches staging: vendor B's bronze suite refuses its shape
    source = load_config(config).source("environment/air_vendor_b")
    bronze_held = {r["record_key"]: r["reason"] for r in quarantine_rows(load_config(config), source)}
    assert "HUGE" not in held
    assert bronze_held["HUGE|294247-01-10 04:00:54"] == "failed expect_column_values_to_match_regex(observed_at)"
