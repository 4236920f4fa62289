"""The incremental case: deliver one new day of source data into an already generated (and loaded) city.

The generator draws whole arrays per run, so a 366-day city is not the 365-day city plus a day; the new
day's records are taken from a second generation (`days + 1`) and delivered the way each agency would:

- air vendor A (local-time daily files): the new day's file appears;
- air vendor B (UTC daily files): the readings of the new local day are appended to the UTC file they
  belong to (the last file is re-delivered longer, the next one appears);
- transport (SQLite, cursor `updated_at`): the new service date's rows are inserted;
- safety (SQLite, full snapshot): the new day's collisions are inserted, with ids after the last one;
- 311 (Open311 JSON, cursor `updated_datetime`): the new day's requests are appended, ids after the last;
- energy (monthly CSV) and waste (weekly XLSX): files the longer generation has and the city has not are
  copied (a new month or week starting on the new day).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
from pathlib import Path
from zoneinfo import ZoneInfo

TZ = ZoneInfo("America/Chicago")
#: written into a city once a new day was delivered: it is no longer the generation it says it is
MARKER = "new_day_delivered.json"


def _utc_bounds(day: dt.date) -> tuple[str, str]:
    lo = dt.datetime.combine(day, dt.time(0), TZ).astimezone(dt.UTC)
    hi = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), TZ).astimezone(dt.UTC)
    return lo.strftime("%Y-%m-%dT%H:%M:%SZ"), hi.strftime("%Y-%m-%dT%H:%M:%SZ")


def add_day(city: Path, longer: Path, day: dt.date) -> dict[str, int]:
    """Copy `day`'s records from the `longer` generation into `city`; return records added per source."""
    iso = day.isoformat()
    added: dict[str, int] = {}

    # air vendor A: one local-day file
    src = longer / "landing" / "air" / "vendor_a" / f"{iso}.jsonl"
    shutil.copyfile(src, city / "landing" / "air" / "vendor_a" / src.name)
    added["air_vendor_a"] = sum(1 for _ in src.open())

    # air vendor B: the local day's readings, appended to the UTC-dated files they belong to
    lo, hi = _utc_bounds(day)
    by_file: dict[str, list[str]] = {}
    for path in sorted((longer / "landing" / "air" / "vendor_b").glob("*.jsonl")):
        if not (lo[:10] <= path.stem <= hi[:10]):
            continue
        for line in path.open():
            try:
                ts = json.loads(line)["observed_at"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if lo <= ts < hi:
                by_file.setdefault(ts[:10], []).append(line if line.endswith("\n") else line + "\n")
    for name, lines in by_file.items():
        with open(city / "landing" / "air" / "vendor_b" / f"{name}.jsonl", "a") as f:
            f.writelines(lines)
    added["air_vendor_b"] = sum(len(v) for v in by_file.values())

    # transport: the new service date's rows (stops are the same in both generations)
    with sqlite3.connect(longer / "transport.sqlite") as src_db, sqlite3.connect(city / "transport.sqlite") as dst:
        rows = src_db.execute("select * from daily_ridership where service_date = ?", (iso,)).fetchall()
        dst.executemany(f"insert into daily_ridership values ({','.join('?' * len(rows[0]))})", rows)
        known = {r[0] for r in dst.execute("select stop_id from stops")}
        stops = [r for r in src_db.execute("select * from stops") if r[0] not in known]
        if stops:
            dst.executemany(f"insert into stops values ({','.join('?' * len(stops[0]))})", stops)
    added["ridership"] = len(rows)

    # safety: the new day's collisions, renumbered after the last id
    with sqlite3.connect(longer / "safety.sqlite") as src_db, sqlite3.connect(city / "safety.sqlite") as dst:
        rows = src_db.execute(
            "select * from collisions where crash_local_time like ? order by collision_id", (iso + "%",)
        ).fetchall()
        last = dst.execute("select max(cast(substr(collision_id, 2) as integer)) from collisions").fetchone()[0] or 0
        rows = [(f"C{last + i + 1:06d}", *r[1:]) for i, r in enumerate(rows)]
        if rows:
            dst.executemany(f"insert into collisions values ({','.join('?' * len(rows[0]))})", rows)
    added["collisions"] = len(rows)

    # 311: the requests made on the new day, renumbered after the last id
    path = city / "open311" / "requests.json"
    requests = json.loads(path.read_text())
    last = max(int(r["service_request_id"]) for r in requests if str(r["service_request_id"]).isdigit())
    new = [
        r
        for r in json.loads((longer / "open311" / "requests.json").read_text())
        if (r.get("requested_datetime") or "").startswith(iso)
    ]
    for i, r in enumerate(new):
        r["service_request_id"] = str(last + i + 1)
    path.write_text(json.dumps(requests + new, indent=1) + "\n")
    added["requests"] = len(new)

    # energy and waste: files only the longer generation has
    for sub, pattern in (("energy", "*.csv"), ("waste", "*.xlsx")):
        have = {p.name for p in (city / "landing" / sub).glob(pattern)}
        n = 0
        for p in (longer / "landing" / sub).glob(pattern):
            if p.name not in have:
                shutil.copyfile(p, city / "landing" / sub / p.name)
                n += 1
        added[f"{sub}_files"] = n
    (city / MARKER).write_text(json.dumps({"day": iso, "added": added}) + "\n")
    return added
