"""Sources are read on a second thread ahead of the checks and commits (`connectors.read_ahead`): the
loader sees the same landings, pieces and errors in the same order as reading them itself, the reading
really overlaps, it stops when the loader stops, and a load gives the same bronze and quarantine."""

from __future__ import annotations

import json
import random
import threading

import pyarrow as pa
import pytest

from orchestration.connectors import READ_AHEAD_ENV, Landing, Rejected, read_ahead
from orchestration.connectors import files as files_connector
from orchestration.connectors.files import FileChanged, UnreadableFile
from tests.connectors_support import bronze_rows, one_source, quarantine_rows, run


def _landings(plan: list, log: list | None = None):
    """Landings as a connector gives them: ("file", name, [pieces..., maybe an exception]),
    ("rows", name), or ("fail", exception) for a listing that fails there."""

    def pieces(name: str, parts: list):
        try:
            for part in parts:
                if isinstance(part, BaseException):
                    raise part
                if log is not None:
                    log.append((name, part, threading.current_thread().name))
                yield pa.table({"v": [f"{name}:{part}"]}), [Rejected(f"{name}:{part}", "bad", name)]
        finally:
            if log is not None:
                log.append((name, "closed", threading.current_thread().name))

    for step in plan:
        if step[0] == "fail":
            raise step[1]
        if step[0] == "rows":
            yield Landing(rows=pa.table({"v": [step[1]]}), file=None)
        else:
            yield Landing(rows=pa.table({}), file=step[1], pieces=lambda n=step[1], p=step[2]: pieces(n, p))


def _trace(landings) -> list:
    """What a loader sees, taking every landing as `ingest` does (a file's error is its own, any other ends)."""
    seen = []
    try:
        for landing in landings:
            if landing.pieces is None:
                seen.append(("rows", landing.rows.to_pylist()))
                continue
            got = []
            try:
                for table, rejected in landing.pieces():
                    got.append((table.to_pylist(), [r.record for r in rejected]))
            except (UnreadableFile, FileChanged) as exc:
                got.append((type(exc).__name__, str(exc)))
            seen.append((landing.file, got))
    except Exception as exc:  # noqa: BLE001 - the listing's own failure, where it happened
        seen.append(("failed", type(exc).__name__, str(exc)))
    return seen


def _random_plan(rng: random.Random) -> list:
    plan = []
    for i in range(rng.randint(0, 12)):
        kind = rng.random()
        if kind < 0.2:
            plan.append(("rows", f"r{i}"))
            continue
        parts: list = list(range(rng.randint(0, 5)))
        if kind < 0.35:
            parts.insert(rng.randint(0, len(parts)), UnreadableFile(f"f{i} is not JSON lines"))
        elif kind < 0.45:
            parts.append(FileChanged(f"f{i} changed while it was read"))
        plan.append(("file", f"f{i}", parts))
    if rng.random() < 0.3:
        plan.append(("fail", OSError(f"the listing failed after {len(plan)} landings")))
    return plan


@pytest.mark.parametrize("seed", range(40))
def test_the_loader_sees_what_it_would_see_reading_itself(seed, monkeypatch):
    plan = _random_plan(random.Random(seed))
    direct = _trace(_landings(plan))
    for depth in (1, 2, 3):
        assert _trace(read_ahead(_landings(plan), depth=depth)) == direct, depth
    monkeypatch.setenv(READ_AHEAD_ENV, "0")
    assert _trace(read_ahead(_landings(plan))) == direct


def test_the_next_piece_is_read_while_the_loader_holds_the_one_before(monkeypatch):
    monkeypatch.delenv(READ_AHEAD_ENV, raising=False)
    second_started = threading.Event()

    def plan():
        def pieces():
            yield pa.table({"v": ["1"]}), []
            second_started.set()
            yield pa.table({"v": ["2"]}), []

        yield Landing(rows=pa.table({}), file="a", pieces=pieces)

    landings = read_ahead(plan())  # (held: a stream closed stops its reader)
    landing = next(landings)
    it = landing.pieces()
    next(it)
    # reading on this thread, the second piece would only start when asked for
    assert second_started.wait(10), "the second piece was not read ahead"
    assert next(it)[0].to_pylist() == [{"v": "2"}]
    assert next(it, None) is None and next(landings, None) is None


def test_pieces_taken_after_the_stream_is_closed_raise_instead_of_waiting(monkeypatch):
    monkeypatch.delenv(READ_AHEAD_ENV, raising=False)
    landings = read_ahead(_landings([("file", "a", list(range(20)))]), depth=1)
    it = next(landings).pieces()
    next(it)
    landings.close()
    with pytest.raises(RuntimeError, match="closed while a file's pieces"):
        for _ in range(20):  # what the reader put before it stopped, then the stream's end
            next(it)


def test_a_loader_that_stops_stops_the_reader_and_closes_the_source(monkeypatch):
    monkeypatch.delenv(READ_AHEAD_ENV, raising=False)
    log: list = []
    plan = [("file", "a", list(range(50))), ("file", "b", list(range(50)))]
    landings = read_ahead(_landings(plan, log), depth=2)
    landing = next(landings)
    it = landing.pieces()
    next(it)
    landings.close()  # the loader failed (a commit raised): the generator is closed as the error unwinds
    assert not any(t.name == "citylake-read-ahead" for t in threading.enumerate())
    read = [p for n, p, _ in log if p != "closed"]
    assert len(read) <= 4, read  # one taken, at most `depth` waiting and one being read: nothing more
    assert ("a", "closed") in [(n, p) for n, p, _ in log]
    assert all(t == "citylake-read-ahead" for _, _, t in log)


def test_a_load_with_read_ahead_writes_what_a_load_without_it_writes(tmp_path, monkeypatch):
    """A drop folder of clean, broken, refused and multi-piece JSON-lines and CSV files, loaded twice
    into two lakes: the same bronze rows and the same quarantine records with their reasons."""
    rng = random.Random(7)
    drop = tmp_path / "drop"
    drop.mkdir()
    for i in range(30):
        lines = []
        for j in range(rng.randint(0, 400)):
            roll = rng.random()
            if roll < 0.02:
                lines.append('{"id": broken')
            elif roll < 0.04:
                lines.append(json.dumps({"value": j}))  # no key
            else:
                lines.append(json.dumps({"id": f"{i}-{j % 350}", "value": rng.choice([j, str(j), None, j / 7])}))
        data = ("\n".join(lines) + "\n").encode()
        if i % 11 == 5:
            data = b"\xff\xfe not text"  # refused whole
        (drop / f"day-{i:02d}.jsonl").write_bytes(data)
    monkeypatch.setattr(files_connector, "PIECE_ROWS", 64)  # files of several pieces, spilled
    spec = {"kind": "files", "path": str(drop / "*.jsonl"), "format": "jsonl", "primary_key": ["id"]}
    loaded = {}
    for mode in ("0", "1"):
        monkeypatch.setenv(READ_AHEAD_ENV, mode)
        cfg, src = one_source(tmp_path / f"city{mode}", "env", "readings", spec)
        result = run(cfg, src)
        bronze = [{k: v for k, v in r.items() if k != "_ingested_at"} for r in bronze_rows(cfg, src)]
        quarantine = sorted((r["location"], r["reason"], r["record"]) for r in quarantine_rows(cfg, src))
        loaded[mode] = (result.rows_read, result.rows_written, result.quarantined, bronze, quarantine)
    assert loaded["1"] == loaded["0"]
    rows_read, written, quarantined, bronze, quarantine = loaded["1"]
    assert written and quarantined and bronze
    reasons = {reason for _, reason, _ in quarantine}
    assert any("utf-8" in r.lower() for r in reasons), reasons  # the refused files
    assert len(reasons) >= 3, reasons


def test_a_load_whose_commit_fails_stops_its_reader_at_once(tmp_path, monkeypatch):
    """The load's error is raised with the reader already stopped and nothing of the drop in bronze.
    (What stops it here is the stream being closed as the error unwinds; `_ingest` also closes it in a
    `finally`, for the case where something keeps the frame alive: this test passes without that line.)"""
    from orchestration import ingest as ingest_module
    from orchestration import lake

    monkeypatch.delenv(READ_AHEAD_ENV, raising=False)
    drop = tmp_path / "drop"
    drop.mkdir()
    for i in range(12):
        (drop / f"f{i:02d}.jsonl").write_text("".join(json.dumps({"id": f"{i}-{j}"}) + "\n" for j in range(50)))
    monkeypatch.setattr(ingest_module, "BRONZE_COMMIT_BYTES", 1)  # a commit after every file

    def refuse(*args, **kwargs):
        raise OSError("the disk is full")

    monkeypatch.setattr(lake, "overwrite_where", refuse)
    spec = {"kind": "files", "path": str(drop / "*.jsonl"), "format": "jsonl", "primary_key": ["id"]}
    cfg, src = one_source(tmp_path / "city", "env", "readings", spec)
    with pytest.raises(Exception, match="the disk is full"):
        run(cfg, src)
    assert not any(t.name == "citylake-read-ahead" for t in threading.enumerate())
    assert bronze_rows(cfg, src) == []
