"""The reference city's simulators never block a command that does not need them, a command that needs
one reuses this city's simulator already running (as `make dev` serves it), and anything else on the
port is a clear error. Real servers occupy the port: the Open311 simulator itself, and a plain HTTP
server standing for a foreign program."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pytest

from orchestration.reference_city import generate, probe_open311, running_open311
from orchestration.reference_city.config import write_config
from orchestration.reference_city.open311 import HEALTH_PATH
from tests.conftest import citylake, free_port

SERVICE_REQUESTS = "service_requests/requests"


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """A tiny reference city (config, Open311 data file, port), never run."""
    root = tmp_path_factory.mktemp("simulators")
    generate(root / "riverton", scale=0.1, days=10, start=date(2025, 3, 1), seed=5)
    port = free_port()
    config = write_config(root, root / "riverton", root / "lake", root / "state", port, lambda c: c.pop("partitions"))
    return config, (root / "riverton" / "open311" / "requests.json").resolve(), port


@contextmanager
def foreign_server(port: int) -> Iterator[None]:
    """Some other program's web server on the port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>not citylake</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_simulator_says_which_city_it_serves(tmp_path: Path) -> None:
    data = tmp_path / "requests.json"
    data.write_text("[]")
    with running_open311(data, port=0) as server:
        found, why = probe_open311(server.port)
    assert found == {"simulator": "open311", "data": str(data.resolve())} and why == ""
    port = free_port()
    with foreign_server(port):
        found, why = probe_open311(port)
    assert found is None and HEALTH_PATH in why


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # (a zombie has ended)


def test_the_simulator_is_a_process_of_its_own_that_ends_with_its_parent(tmp_path: Path) -> None:
    """It parses on another core than the run's (an agency system is not part of citylake's process);
    it ends with its block, and with the process that started it when that one is killed outright."""
    data = tmp_path / "requests.json"
    data.write_text("[]")
    with running_open311(data, port=0) as server:
        assert server.pid != os.getpid() and _alive(server.pid)
        assert probe_open311(server.port)[0] is not None
    assert not _alive(server.pid)
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from orchestration.reference_city import running_open311\n"
            "with running_open311(sys.argv[1], port=0) as s:\n"
            "    print(s.pid, s.port, flush=True)\n"
            "    time.sleep(120)\n",
            str(data),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    pid, port = map(int, parent.stdout.readline().split())
    assert probe_open311(port)[0] is not None
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the simulator outlived its killed parent"
    assert probe_open311(port, timeout=1)[0] is None


def test_a_foreign_program_on_the_port_is_a_clear_error_only_for_commands_that_need_the_simulator(city) -> None:
    config, _data, port = city
    with foreign_server(port):
        proc = citylake("check", config=config, check=False)
        assert proc.returncode == 1
        assert f"simulators.open311: 127.0.0.1:{port} is taken" in proc.stderr
        assert "not citylake's Open311 simulator" in proc.stderr and "Traceback" not in proc.stderr
        # a selection that does not read the 311 API runs, the port still taken
        proc = citylake("run", "--select", "bronze/transport/ridership", config=config, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "simulators.open311" not in proc.stdout + proc.stderr
        assert "transport/ridership" in proc.stdout


def test_a_command_reuses_this_citys_running_simulator_and_refuses_another_citys(city, tmp_path: Path) -> None:
    config, data, port = city
    with running_open311(data, port=port):  # as `make dev` serves it
        proc = citylake("check", config=config, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "reusing this city's simulator" in proc.stderr
        line = next(x for x in proc.stdout.splitlines() if SERVICE_REQUESTS in x)
        assert line.split()[0] == "ok", line
        # a run that loads the 311 source reads it from the running simulator
        proc = citylake("run", "--select", f"bronze/{SERVICE_REQUESTS}", config=config, check=False)
        # (the tiny city's few records fail its bronze gate's `mostly`, which is not the point here)
        assert "reusing this city's simulator" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        expected = len(json.loads(data.read_text()))
        row = next(x for x in proc.stdout.splitlines() if x.strip().startswith(SERVICE_REQUESTS))
        assert int(row.split()[1].replace(",", "")) == expected, proc.stdout  # rows read = the API's records
        # `citylake dev` keeps its simulator for as long as the UI runs: it does not lean on another's
    other = tmp_path / "elsewhere.json"
    other.write_text("[]")
    with running_open311(other, port=port):
        proc = citylake("check", config=config, check=False)
    assert proc.returncode == 1
    assert "the Open311 simulator of another city" in proc.stderr and str(other.resolve()) in proc.stderr


def test_a_client_leaving_mid_page_prints_no_traceback(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """`citylake check` reads only the status line of the first page; the simulator must not print a
    BrokenPipeError traceback for the rest it could not send."""
    data = tmp_path / "requests.json"
    record = {"service_request_id": "x", "updated_datetime": "2025-01-01T00:00:00", "service_code": "a"}
    data.write_text(json.dumps([{**record, "service_request_id": str(i), "pad": "p" * 400} for i in range(5000)]))
    with running_open311(data, port=0) as server:
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", server.port)) as s:
                s.sendall(b"GET /open311/v2/requests.json?page_size=5000 HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(12).startswith(b"HTTP/1.0 200")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        with socket.create_connection(("127.0.0.1", server.port)) as s:  # the server still answers
            s.sendall(f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert s.recv(12).startswith(b"HTTP/1.0 200")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
