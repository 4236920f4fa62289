"""`citylake listen` against the real Mosquitto on this machine: at-least-once delivery across a
listener killed with SIGKILL before it acknowledged, dedup on the primary key at ingestion, bad
payloads quarantined, batch files ingested once."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
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


def _mqtt_city(tmp_path, url: str, primary_key: list[str]) -> tuple:
    """A city with one MQTT source, environment/air, on a topic of its own: (config, topic prefix, landing)."""
    prefix = f"citylake-test/{uuid.uuid4().hex[:8]}"
    landing = tmp_path / "landing"
    source = {
        "kind": "mqtt",
        "url": url,
        "topic": f"{prefix}/+",
        "client_id": f"citylake-test-{uuid.uuid4().hex[:8]}",
        "landing": str(landing),
        "primary_key": primary_key,
    }
    return city_yaml(tmp_path, {"environment": {"air": source}}), prefix, landing


def test_killed_listener_loses_nothing_and_ingestion_dedups(broker, tmp_path):
    config, prefix, landing = _mqtt_city(tmp_path, "mqtt://127.0.0.1:1883", ["sensor_id", "observed_at"])
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


class CuttableProxy:
    """A TCP proxy on loopback in front of the real Mosquitto that can cut every connection it carries
    and refuse new ones for a while: the network between `citylake listen` and its broker failing."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 1883)) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.up = threading.Event()
        self.up.set()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()  # the broker is unreachable: the connection is refused at once
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every carried connection and refuse new ones until `restore()`."""
        self.up.clear()
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.server.close()


def _landed(landing) -> list[dict]:
    return [
        json.loads(line)["payload"]
        for path in [*landing.glob("*.jsonl"), *landing.glob("ingested/*.jsonl")]
        for line in path.read_text().splitlines()
    ]


def test_broker_connection_cut_mid_stream_loses_no_message(broker, tmp_path):
    """The network to the broker fails while a sensor publishes 300 numbered QoS 1 messages: the listener
    reconnects to its persistent session and lands every message (some twice: at least once); ingestion
    keeps each exactly once."""
    import paho.mqtt.client as mqtt

    proxy = CuttableProxy()
    config, prefix, landing = _mqtt_city(tmp_path, f"mqtt://127.0.0.1:{proxy.port}", ["sensor_id", "seq"])
    listener = _listener(config, "--flush-seconds", "0.5")
    n, cut_at = 300, 100
    sensor = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sensor.connect("127.0.0.1", 1883)  # the sensor reaches the broker directly
    sensor.loop_start()
    try:
        sent = []
        for seq in range(n):
            if seq == cut_at:
                proxy.cut()  # mid-stream: the listener loses the broker...
                threading.Timer(1.5, proxy.restore).start()  # ...for a second and a half
            payload = json.dumps({"sensor_id": "s1", "seq": seq, "pm25": seq / 10})
            sent.append(sensor.publish(f"{prefix}/s1", payload, qos=1))
            time.sleep(0.005)
        for info in sent:
            info.wait_for_publish(10)
    finally:
        sensor.disconnect()
        sensor.loop_stop()
    deadline = time.monotonic() + 60
    while {int(p["seq"]) for p in _landed(landing)} != set(range(n)):
        assert time.monotonic() < deadline, sorted(set(range(n)) - {int(p["seq"]) for p in _landed(landing)})[:20]
        time.sleep(0.2)
    listener.send_signal(signal.SIGTERM)
    out, err = listener.communicate(timeout=20)
    proxy.close()
    assert listener.returncode == 0, err
    # (the first "subscribed" was read by _listener: this one is the subscription after reconnecting)
    assert proxy.connections >= 2 and "reconnecting" in err and "subscribed" in err, err
    landed = len(_landed(landing))
    assert f"Landed {landed} messages." in out and landed >= n

    from orchestration.config import load_config

    cfg = load_config(config)
    src = cfg.source("environment/air")
    run(cfg, src)
    rows = bronze_rows(cfg, src)
    assert sorted(int(r["seq"]) for r in rows) == list(range(n))
    assert quarantine_rows(cfg, src) == []  # a redelivery equal to the landed message is no reject
