"""File drops: every format and the CSV options, each file loaded once by path + checksum, a
re-delivered file replacing its rows, an unparseable file recorded in quarantine once, and the
arrival sensor requesting a run only when something new lands."""

from __future__ import annotations

import importlib
import json

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from openpyxl import Workbook

from tests.connectors_support import bronze_rows, one_source, quarantine_rows, run, version


def test_csv_options_redelivery_and_unparseable_file(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    # a Latin-1, semicolon-separated export with a ragged line
    (drop / "2025-01.csv").write_bytes("meter;month;kwh;note\nm1;2025-01;10,5;Café\nm2;2025-01;7\n".encode("latin-1"))
    spec = {
        "kind": "files",
        "path": str(drop / "*.csv"),
        "format": "csv",
        "delimiter": ";",
        "encoding": "latin-1",
        "primary_key": ["meter", "month"],
    }
    cfg, src = one_source(tmp_path, "energy", "meters", spec)
    first = run(cfg, src)
    assert first.rows_written == 1 and first.quarantined == 1
    (row,) = bronze_rows(cfg, src)
    assert row["note"] == "Café" and row["kwh"] == "10,5" and row["_source_file"] == str(drop / "2025-01.csv")
    assert row["_source_checksum"] and row["_batch"] == "run-1"
    (q,) = quarantine_rows(cfg, src)
    assert q["reason"] == "expected 4 fields, got 3" and q["location"].endswith("2025-01.csv:3")

    # unchanged: skipped, no new Delta version
    v1 = version(cfg, src)
    assert run(cfg, src, "run-2").files_loaded == [] and version(cfg, src) == v1

    # re-delivered with corrected content: its rows replace the earlier ones; a second file is added
    (drop / "2025-01.csv").write_bytes(b"meter;month;kwh;note\nm1;2025-01;11;x\nm2;2025-01;7;y\n")
    (drop / "2025-02.csv").write_bytes(b"meter;month;kwh;note\nm1;2025-02;12;z\n")
    third = run(cfg, src, "run-3")
    assert len(third.files_loaded) == 2 and third.row_count == 3
    assert [(r["meter"], r["month"], r["kwh"]) for r in bronze_rows(cfg, src)] == [
        ("m1", "2025-01", "11"),
        ("m1", "2025-02", "12"),
        ("m2", "2025-01", "7"),
    ]


def test_the_same_bad_line_in_several_files_is_held_back_once_per_file(tmp_path):
    """An export's trailer or broken line repeated in every daily file: one quarantine row per file (with
    its file:line), as many as the load counted; a rerun adds none."""
    import random

    rng = random.Random(7)
    drop = tmp_path / "drop"
    drop.mkdir()
    days = rng.randint(3, 8)
    for d in range(days):
        rows = "".join(f'{{"id": "{d}-{i}", "v": {i}}}\n' for i in range(rng.randint(1, 5)))
        (drop / f"day{d}.jsonl").write_text(rows + '{"id": "trailer", "v": \n')  # the same broken line each day
    spec = {"kind": "files", "path": str(drop / "*.jsonl"), "format": "jsonl", "primary_key": ["id"]}
    cfg, src = one_source(tmp_path, "parks", "counters", spec)
    first = run(cfg, src)
    held = quarantine_rows(cfg, src)
    assert first.quarantined == days == len(held)
    assert sorted(q["location"].rsplit("/", 1)[-1].split(":")[0] for q in held) == [
        f"day{d}.jsonl" for d in range(days)
    ]
    (drop / "day0.jsonl").write_text((drop / "day0.jsonl").read_text() + '{"id": "late", "v": 1}\n')
    run(cfg, src, "run-2")  # a changed file read again: its broken line is not held back twice
    assert len(quarantine_rows(cfg, src)) == days


def test_every_format_and_a_broken_file_recorded_once(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    wb = Workbook()
    wb.active.append(["route", "tonnes"])
    wb.active.append(["r1", 1.5])
    wb.save(drop / "a.xlsx")
    (drop / "b.json").write_text(json.dumps({"items": [{"route": "r2", "tonnes": 2}]}))
    (drop / "c.jsonl").write_text('{"route": "r3", "tonnes": 3}\nnot json\n')
    pq.write_table(pa.table({"route": ["r4"], "tonnes": [4.0]}), drop / "d.parquet")
    (drop / "e.json").write_text('{"items": [{"route": "r5"')  # cut short
    for fmt, pattern, extra, expected in [
        ("xlsx", "*.xlsx", {}, [("r1", "1.5")]),
        ("json", "*.json", {"records_path": "items"}, [("r2", "2")]),
        ("jsonl", "*.jsonl", {}, [("r3", "3")]),
        ("parquet", "*.parquet", {}, [("r4", 4.0)]),
    ]:
        spec = {"kind": "files", "path": str(drop / pattern), "format": fmt, "primary_key": ["route"], **extra}
        cfg, src = one_source(tmp_path / fmt, "waste", fmt, spec)
        result = run(cfg, src)
        assert [(r["route"], r["tonnes"]) for r in bronze_rows(cfg, src)] == expected, fmt
        if fmt == "json":
            # e.json could not be parsed: recorded with its reason, and not retried while unchanged
            (q,) = quarantine_rows(cfg, src)
            assert q["location"].endswith("e.json") and "could not be parsed as json" in q["reason"]
            assert result.quarantined == 1
            again = run(cfg, src, "run-2")
            assert again.rows_read == 0 and len(quarantine_rows(cfg, src)) == 1
        if fmt == "jsonl":
            (q,) = quarantine_rows(cfg, src)
            assert q["location"].endswith("c.jsonl:2") and q["reason"].startswith("not valid JSON")


def test_arrival_sensor_requests_a_run_only_for_new_files(tmp_path, monkeypatch):
    drop = tmp_path / "drop"
    drop.mkdir()
    spec = {"kind": "files", "path": str(drop / "*.csv"), "format": "csv", "primary_key": ["id"]}
    cfg, src = one_source(tmp_path, "energy", "meters", spec)
    monkeypatch.setenv("CITYLAKE_CONFIG", str(cfg.path))
    from orchestration.city import city

    city.cache_clear()
    sensors = importlib.import_module("orchestration.defs.bronze.sensors")
    sensor = sensors.arrival_sensor(src)
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor):
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
        return sensor(ctx)

    def skipped(result) -> bool:  # a skip that also moves the cursor is a SensorResult with a skip reason
        return isinstance(result, dg.SkipReason) or (not result.run_requests and result.skip_reason is not None)

    assert skipped(tick(None))
    (drop / "a.csv").write_text("id\n1\n")
    result = tick(None)
    (request,) = result.run_requests
    assert request.asset_selection == [dg.AssetKey(["bronze", "energy", "meters"])]
    assert skipped(tick(result.cursor))
    (drop / "b.csv").write_text("id\n2\n")
    second = tick(result.cursor)
    assert len(second.run_requests) == 1 and second.run_requests[0].run_key != request.run_key
    city.cache_clear()


def test_unchanged_files_are_not_read_again_and_a_same_size_same_mtime_rewrite_is(tmp_path, monkeypatch):
    """A run with nothing new does not read every file of the folder to learn its checksum (the memo under
    the state dir); a file rewritten with the same size and its old mtime put back is still read (its ctime
    moved), and its new rows land."""
    import os

    from orchestration.connectors import files

    drop = tmp_path / "drop"
    drop.mkdir()
    for day in range(1, 6):
        (drop / f"2025-01-0{day}.jsonl").write_text(f'{{"id": "a{day}", "v": "1"}}\n{{"id": "b{day}", "v": "2"}}\n')
    spec = {"kind": "files", "path": str(drop / "*.jsonl"), "format": "jsonl", "primary_key": ["id"]}
    cfg, src = one_source(tmp_path, "environment", "sensors", spec)
    hashed: list[str] = []
    real = files.checksum
    monkeypatch.setattr(files, "checksum", lambda p: hashed.append(p) or real(p))
    assert len(run(cfg, src).files_loaded) == 5 and len(hashed) == 5

    hashed.clear()
    assert run(cfg, src, "run-2").files_loaded == [] and hashed == []

    target = drop / "2025-01-03.jsonl"
    st = target.stat()
    target.write_text('{"id": "a3", "v": "7"}\n{"id": "b3", "v": "8"}\n')  # same size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    third = run(cfg, src, "run-3")
    assert third.files_loaded == [str(target)] and hashed == [str(target)]
    assert {r["id"]: r["v"] for r in bronze_rows(cfg, src)}["a3"] == "7"

    # the memo lost (or unreadable): every file is read again, and nothing loads twice
    (cfg.state_dir / "checksums" / "environment.sensors.json").write_text("{not json")
    hashed.clear()
    assert run(cfg, src, "run-4").files_loaded == [] and len(hashed) == 5
