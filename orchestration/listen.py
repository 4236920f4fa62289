"""`citylake listen`: the MQTT subscriber that lands sensor messages as JSON-lines batch files.

Delivery is at least once, end to end. Each source subscribes with QoS 1 (`qos:`) under a fixed client
id in a persistent session (clean_session off), and acknowledges a message only after the batch file
holding it is written, flushed to disk and renamed into the landing folder. A listener killed before
that never acknowledged the message, so the broker delivers it again when the listener comes back;
ingestion upserts by primary key, so a message landed twice is one bronze row.

A batch is flushed when it reaches `--batch-size` messages, when its first message is
`--flush-seconds` old, or when the broker has gone quiet for a moment (a broker sends only a window of
unacknowledged messages, e.g. Mosquitto's max_inflight_messages of 20, so waiting longer would stall).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orchestration.config import Source
from orchestration.connectors import redact
from orchestration.connectors.mqtt import broker, landing_dir

#: a pause this long in arrivals flushes the batch
IDLE_FLUSH_S = 0.3


@dataclass
class _Pending:
    lines: list[str] = field(default_factory=list)
    mids: list[tuple[int, int]] = field(default_factory=list)
    first_at: float = 0.0
    last_at: float = 0.0


class SourceListener:
    """One MQTT source: a client, its pending messages and its landing folder."""

    def __init__(self, source: Source, log: Callable[[str], None]) -> None:
        import paho.mqtt.client as mqtt

        self.source, self.log = source, log
        self.folder = landing_dir(source)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.qos = int(source.get("qos"))
        self.pending = _Pending()
        self.lock = threading.Lock()
        self.landed = 0
        self.connected = threading.Event()
        b = broker(source)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=str(source.get("client_id") or f"citylake-{source.agency}-{source.name}"),
            clean_session=False,
            manual_ack=True,
        )
        if b["username"]:
            self.client.username_pw_set(b["username"], b["password"])
        if b["tls"]:
            self.client.tls_set()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.host, self.port = b["host"], b["port"]

    def start(self) -> None:
        """Connect and subscribe (paho reconnects by itself after a network failure)."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise ConnectionError(
                redact(f"{self.source.where}: cannot reach the broker at {self.host}:{self.port}: {exc}", self.source)
            ) from None
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.log(f"{self.source.key}: broker refused the connection: {reason_code}")
            return
        client.subscribe(str(self.source.get("topic")), qos=self.qos)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        # only now does the broker route the topic's messages to this session
        refused = [rc for rc in reason_codes if rc.is_failure]
        if refused:
            self.log(f"{self.source.key}: broker refused the subscription to {self.source.get('topic')}: {refused[0]}")
            return
        self.connected.set()
        self.log(f"{self.source.key}: subscribed to {self.source.get('topic')} on {self.host}:{self.port}")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code.is_failure:
            self.log(f"{self.source.key}: disconnected ({reason_code}); reconnecting")

    def _on_message(self, client, userdata, message) -> None:
        text = message.payload.decode("utf-8", errors="replace")
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError):
            # not JSON, or JSON Python cannot hold (nested ~1000 deep, a number of 4300+ digits): landed as
            # text, ingestion quarantines it with its reason; raising here would stop the listener
            payload = text
        line = json.dumps(
            {
                "topic": message.topic,
                "received_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                "payload": payload,
            },
            separators=(",", ":"),
        )
        now = time.monotonic()
        with self.lock:
            if not self.pending.lines:
                self.pending.first_at = now
            self.pending.lines.append(line)
            self.pending.mids.append((message.mid, message.qos))
            self.pending.last_at = now

    def due(self, batch_size: int, flush_seconds: float, idle_seconds: float = IDLE_FLUSH_S) -> bool:
        with self.lock:
            p = self.pending
            if not p.lines:
                return False
            now = time.monotonic()
            return len(p.lines) >= batch_size or now - p.first_at >= flush_seconds or now - p.last_at >= idle_seconds

    def flush(self) -> Path | None:
        """Write the pending messages as one batch file, durably, then acknowledge them."""
        with self.lock:
            pending, self.pending = self.pending, _Pending()
        if not pending.lines:
            return None
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        final = self.folder / f"{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
        tmp = self.folder / f".{final.name}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(pending.lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        # the rename is the commit: ingestion never sees a half-written batch
        os.replace(tmp, final)
        _fsync_dir(self.folder)
        for mid, qos in pending.mids:
            if qos > 0:
                self.client.ack(mid, qos)
        self.landed += len(pending.lines)
        self.log(f"{self.source.key}: landed {len(pending.lines)} messages in {final.name}")
        return final

    def stop(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def listen(
    sources: list[Source],
    flush_seconds: float = 5.0,
    batch_size: int = 1000,
    duration: float | None = None,
    log: Callable[[str], None] = print,
    idle_seconds: float = IDLE_FLUSH_S,
) -> int:
    """Subscribe every source and land batches until SIGINT/SIGTERM (or `duration` seconds).

    Returns the number of messages landed. Pending messages are flushed before exiting.
    """
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    listeners = [SourceListener(s, log) for s in sources]
    try:
        for lst in listeners:
            lst.start()
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            for lst in listeners:
                if lst.due(batch_size, flush_seconds, idle_seconds):
                    lst.flush()
            stop.wait(0.05)
    finally:
        for lst in listeners:
            lst.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return sum(lst.landed for lst in listeners)
