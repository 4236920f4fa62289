"""`citylake listen` against the real Mosquitto on this machine: at-least-once delivery across a
listener killed with SIGKILL before it acknowledged, dedup on the primary key at ingestion, bad
payloads quarantined, batch files ingested once."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import uuid

import pytest

from tests.conftest import BIN
from tests.connectors_support import bronze_rows, city_yaml, quarantine_rows, run


@pytest.fixture
def broker() -> None:
    try:
        socket.create_connection(("127.0.0.1", 1883), timeout=2).close()
    except OSError as exc:
        pytest.skip(f"Mosquitto not reachable at 127.0.0.1:1883: {exc}")


def _listener(config, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(BIN / "citylake"), "listen", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    line = ""
    while "subscribed" not in line:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "listener did not subscribe"
    return proc


def _publish(topic_prefix: str, messages: list[tuple[str, str]]) -> None:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    for sub, payload in messages:
        client.publish(f"{topic_prefix}/{sub}", payload, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def _reading(sensor: str, minute: int, pm25: float) -> str:
    return json.dumps({"sensor_id": sensor, "observed_at": f"2025-01-01T00:{minute:02d}:00Z", "pm25": pm25})


def test_killed_listener_loses_nothing_and_ingestion_dedups(broker, tmp_path):
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
                    "primary_key": ["sensor_id", "observed_at"],
                }
            }
        },
    )
    # 1: a listener that holds its batch (long flush) is killed before it writes or acknowledges
    first = _listener(config, "--flush-seconds", "60", "--idle-seconds", "60")
    _publish(prefix, [("s1", _reading("s1", m, 10 + m)) for m in range(4)] + [("s1", "not json {")])
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert list(landing.glob("*.jsonl")) == []

    # 2: the next listener gets the unacknowledged messages again, plus new ones and a redelivery
    second = _listener(config, "--flush-seconds", "0.5")
    _publish(prefix, [("s2", _reading("s2", m, 20 + m)) for m in range(3)] + [("s1", _reading("s1", 0, 10))])
    deadline = time.monotonic() + 20
    while sum(len(p.read_text().splitlines()) for p in landing.glob("*.jsonl")) < 9:
        assert time.monotonic() < deadline, [p.read_text() for p in landing.glob("*.jsonl")]
        time.sleep(0.2)
    second.send_signal(signal.SIGTERM)
    out, _ = second.communicate(timeout=20)
    assert second.returncode == 0 and "Landed 9 messages." in out

    from orchestration.config import load_config

    cfg = load_config(config)
    src = cfg.source("environment/air")
    result = run(cfg, src)
    rows = bronze_rows(cfg, src)
    assert [(r["sensor_id"], r["observed_at"], r["pm25"]) for r in rows] == [
        *[("s1", f"2025-01-01T00:{m:02d}:00Z", str(10 + m)) for m in range(4)],
        *[("s2", f"2025-01-01T00:{m:02d}:00Z", str(20 + m)) for m in range(3)],
    ]
    assert {r["_topic"] for r in rows} == {f"{prefix}/s1", f"{prefix}/s2"} and all(r["_source_file"] for r in rows)
    (q,) = quarantine_rows(cfg, src)
    assert q["record"] == "not json {" and "is not a JSON object" in q["reason"]
    assert result.quarantined == 1 and list(landing.glob("*.jsonl")) == []
    assert len(list((landing / "ingested").glob("*.jsonl"))) >= 1
    again = run(cfg, src, "run-2")
    assert again.rows_read == 0 and again.versions_committed == 0 and len(bronze_rows(cfg, src)) == 7
