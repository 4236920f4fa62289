"""Sensors that start a bronze run when new data arrives: one per `files` source (new or changed
files under its glob) and one per `mqtt` source (new batch files from `citylake listen`).

A sensor requests a run only for files that are new or changed since its last tick (its cursor holds
each file's size and modification time) and that bronze or quarantine do not already hold by path and
checksum: opening the UI after `citylake run` starts nothing. Which files are new is decided again when
the run ingests (so a file seen twice by a sensor is still loaded once). Set `sensor: false` on a source
to leave it to its schedule. Sensors start running with the daemon (`citylake dev`).
"""

import hashlib
import json

import dagster as dg

from orchestration.city import city
from orchestration.config import Source


def arrivals(source: Source) -> dict[str, str]:
    """Files waiting for the source now: path -> size and modification time."""
    if source.kind == "mqtt":
        from orchestration.connectors.mqtt import pending_batches

        stamps = {}
        for p in pending_batches(source):
            try:
                st = p.stat()
            except FileNotFoundError:  # ingested (moved aside) while we listed
                continue
            stamps[str(p)] = f"{st.st_size}:{st.st_mtime_ns}"
        return stamps
    from orchestration.connectors.files import file_stamps

    return file_stamps(source.local_path())


def already_loaded_dropped(source: Source, paths: list[str]) -> list[str]:
    """`paths` without the files a load would skip: for a files source, those whose path and checksum
    bronze or quarantine already hold (what every file is on the first tick after `citylake run`
    loaded the folder, when the sensor has no cursor yet). MQTT batch files leave the landing folder
    when ingested, so every pending one is new."""
    if source.kind != "files" or not paths:
        return paths
    from orchestration.connectors.files import ChecksumMemo
    from orchestration.ingest import checksum_memo_path, loaded_files

    cfg = city()
    _, loaded = loaded_files(cfg, source)
    # read only: the memo holds every file of the folder, and this is a part of it
    memo = ChecksumMemo(checksum_memo_path(cfg, source))
    new = []
    for p in paths:
        try:
            if (p, memo.checksum(p)) not in loaded:
                new.append(p)
        except FileNotFoundError:  # moved away since it was listed
            continue
    return new


def arrival_sensor(source: Source) -> dg.SensorDefinition:
    """Request a run of bronze/<agency>/<source> when a file appears or changes."""
    key = dg.AssetKey(["bronze", source.agency, source.name])

    @dg.sensor(
        name=f"bronze_{source.agency}__{source.name}_arrivals",
        asset_selection=[key],
        minimum_interval_seconds=int(source.get("sensor_interval_s")),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Starts bronze/{source.agency}/{source.name} when new "
        + ("MQTT batches land." if source.kind == "mqtt" else f"files match {source.get('path')}."),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen = json.loads(context.cursor) if context.cursor else {}
        now = arrivals(source)
        new = already_loaded_dropped(source, sorted(p for p, stamp in now.items() if seen.get(p) != stamp))
        # the cursor keeps only what still exists, so it stays as small as the folder; it moves on a skip
        # too, so files judged already loaded are not checksummed again on the next tick
        cursor = json.dumps(now)
        if not new:
            return dg.SensorResult(skip_reason=f"no new files for {source.key}", cursor=cursor)
        run_key = hashlib.sha256(json.dumps([(p, now[p]) for p in new]).encode()).hexdigest()[:32]
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(run_key=run_key, asset_selection=[key], tags={"citylake/new_files": str(len(new))})
            ],
            cursor=cursor,
        )

    return _sensor


defs = dg.Definitions(
    sensors=[arrival_sensor(s) for s in city().sources if s.kind in ("files", "mqtt") and s.get("sensor") is not False]
)
