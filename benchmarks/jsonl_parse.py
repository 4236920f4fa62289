"""CPU of reading JSON-lines files into bronze pieces: the Python reader (json.loads per line, text_table)
against the native one (pyarrow.json, orchestration/connectors/files.py), on files shaped like the
reference city's two air feeds at scale 10 (120 stations x 96 quarter hours = 11 520 lines a day).

Every 10th file holds a broken line (vendor A: cut in half) or a value that is not a number (vendor B:
"n/a"), more than the reference city has, so the split-around-a-bad-line path is part of the figure.
Both readers' pieces are compared: the run fails if they differ.

    python -m benchmarks.jsonl_parse [--files 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import tempfile
import time
from pathlib import Path

from orchestration.config import Source
from orchestration.connectors import files

STATIONS = 120


def air_file(path: Path, vendor: str, day: int, broken: bool) -> None:
    """One day of one vendor's readings, written as pandas' to_json(lines=True) writes them."""
    rng = random.Random(day * 2 + (vendor == "b"))
    start = dt.datetime(2025, 1, 1) + dt.timedelta(days=day)
    lines = []
    for q in range(96):
        t = start + dt.timedelta(minutes=15 * q)
        for s in range(STATIONS):

            def v(lo: float, hi: float, factor: float = 1.0) -> float | None:
                return None if rng.random() < 0.01 else round(rng.uniform(lo, hi) * factor, 1)

            lat, lon = 48.8 + s / 1000 + 0.0001234567, 2.3 + s / 1000 + 0.0007654321
            if vendor == "a":
                r = {"sensor": f"A-{s + 1:03d}", "ts": t.strftime("%Y-%m-%d %H:%M:%S")}
                r |= {"pm25": v(3, 60), "pm10": v(5, 150), "no2_ppb": v(2, 60), "o3_ppb": v(5, 70)}
                r |= {"lat": lat, "lon": lon}
            else:
                r = {"station_id": f"B-{s + 1:03d}", "observed_at": t.strftime("%Y-%m-%dT%H:%M:%SZ")}
                r |= {"pm25_ugm3": v(3, 60), "pm10_ugm3": v(5, 150), "no2_ugm3": v(2, 60, 1.88)}
                r |= {"o3_ugm3": v(5, 70, 1.96), "latitude": lat, "longitude": lon}
            lines.append(json.dumps(r, separators=(",", ":")))
    if broken:
        at = rng.randrange(len(lines))
        lines[at] = (
            lines[at][: len(lines[at]) // 2]
            if vendor == "a"
            else lines[at].replace('"pm25_ugm3":', '"pm25_ugm3":"n/a","x":', 1)
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="citylake-jsonl-") as tmp:
        paths = []
        for n in range(args.files):
            vendor = "ab"[n % 2]
            path = Path(tmp) / f"{vendor}_{n // 2:03d}.jsonl"
            air_file(path, vendor, n // 2, broken=n % 10 == 9)
            paths.append(path)
        source = Source("bench", "air", "files", {"format": "jsonl", "path": f"{tmp}/*.jsonl"}, Path(tmp), (), "UTC")
        lines = sum(p.read_bytes().count(b"\n") for p in paths)
        size = sum(p.stat().st_size for p in paths) / (1 << 20)
        print(f"{len(paths)} files, {lines} lines, {size:.0f} MiB")
        timings = {}
        for name, read in (("python", files._python_jsonl_pieces), ("native", files._jsonl_pieces)):
            best = float("inf")
            for _ in range(args.repeat):
                before = files.JSONL_LINES.copy()
                t0 = time.process_time()
                for p in paths:
                    for _piece in read(source, str(p)):
                        pass
                best = min(best, time.process_time() - t0)
            done = files.JSONL_LINES - before
            timings[name] = best
            print(
                f"{name}: {best:.2f} s CPU ({best / len(paths) * 1000:.1f} ms a file), lines per reader: {dict(done)}"
            )
        for p in paths:
            want = list(files._python_jsonl_pieces(source, str(p)))
            got = list(files._jsonl_pieces(source, str(p)))
            same = len(want) == len(got) and all(
                a.schema.equals(b.schema) and a.equals(b) and ra == rb
                for (a, ra), (b, rb) in zip(want, got, strict=True)
            )
            if not same:
                raise SystemExit(f"the readers differ on {p}")
        factor = 730 / len(paths)
        old, new = timings["python"], timings["native"]
        print(
            f"native / python: {new / old:.3f} ({old / new:.1f}x faster); for 730 such files (scale 10, one year, "
            f"two vendors): {old * factor:.0f} s -> {new * factor:.0f} s CPU; pieces identical"
        )


if __name__ == "__main__":
    main()
