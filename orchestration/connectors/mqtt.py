"""MQTT sources: `citylake listen` lands messages as JSON-lines batch files; ingestion reads them here.

A batch file holds one envelope per line, `{"topic", "received_at", "payload"}`. A payload that is a
JSON object becomes a row (its fields, plus `_topic` and `_received_at`); any other payload is
rejected with its reason. Delivery is at least once, so the same message may sit in two batches:
bronze upserts MQTT rows by primary key. A batch file is moved to `ingested/` under the landing
folder once its rows are committed, so each batch is read once (a crash between the commit and the
move rereads it, and the upsert makes that harmless).

Source keys: url (`mqtt://[user:password@]host[:1883]`, `mqtts://` for TLS; secrets as `${VAR}`),
topic (a filter, `+` and `#` allowed), qos (1), client_id (`citylake-<agency>-<source>`: the broker
keeps this session's messages while the listener is down), landing (the batch folder; default
`landing/<agency>/<source>` beside city.yaml).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from orchestration.config import Source
from orchestration.connectors import Landing, Rejected, text_table

INGESTED = "ingested"


def landing_dir(source: Source) -> Path:
    """Where the listener writes this source's batch files."""
    if source.get("landing"):
        return Path(source.local_path("landing"))
    return source.base_dir / "landing" / source.agency / source.name


def pending_batches(source: Source) -> list[Path]:
    """Batch files not yet ingested, oldest first (names start with their UTC time)."""
    folder = landing_dir(source)
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def broker(source: Source) -> dict:
    """Host, port, TLS and credentials of the source's broker (secrets resolved; never log them)."""
    url = source.secret_value(source.get("url"), "url")
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"{source.where}.url: use mqtt://host:1883 or mqtts://host:8883, got scheme '{u.scheme}'")
    tls = u.scheme in ("mqtts", "ssl")
    return {
        "host": u.hostname or "127.0.0.1",
        "port": u.port or (8883 if tls else 1883),
        "tls": tls,
        "username": unquote(u.username) if u.username else None,
        "password": unquote(u.password) if u.password else None,
    }


def read_mqtt_batches(source: Source) -> Iterator[Landing]:
    """One Landing per pending batch file; committing it moves the file to `ingested/`."""
    for path in pending_batches(source):
        data = path.read_bytes()
        rows, rejected = [], []
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                envelope = json.loads(line)
                payload = envelope["payload"]
            except (ValueError, RecursionError, KeyError, TypeError) as exc:
                rejected.append(Rejected(line, f"not a citylake batch line: {exc}", f"{path}:{n}"))
                continue
            if isinstance(payload, dict):
                rows.append({**payload, "_topic": envelope.get("topic"), "_received_at": envelope.get("received_at")})
            else:
                text = payload if isinstance(payload, str) else json.dumps(payload)
                rejected.append(
                    Rejected(text, f"payload on {envelope.get('topic')} is not a JSON object", f"{path}:{n}")
                )
        yield Landing(
            rows=text_table(rows),
            rejected=rejected,
            file=str(path),
            checksum=hashlib.sha256(data).hexdigest(),
            after_commit=lambda p=path: _move_ingested(p),
        )


def _move_ingested(path: Path) -> None:
    target = path.parent / INGESTED
    target.mkdir(exist_ok=True)
    os.replace(path, target / path.name)
