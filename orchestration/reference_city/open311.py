"""A tiny Open311 GeoReport v2-style server for the reference city's service requests (loopback, stdlib).

GET /open311/v2/requests.json?page=&page_size=&updated_after=  -> a page of requests ordered by
(updated_datetime, service_request_id); GET /open311/v2/services.json -> the service list;
GET /citylake/simulator -> which simulator this is and the file it serves (HEALTH_PATH), so that a
citylake command finding the port taken can tell its own city's running simulator from anything else.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

#: answers {"simulator": "open311", "data": <absolute path of the requests file>}
HEALTH_PATH = "/citylake/simulator"
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 5000


def _instant(text: str) -> datetime:
    """Parse ISO 8601; a value without an offset is taken as UTC."""
    ts = datetime.fromisoformat(text)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


class _Store:
    """The requests file, parsed and sorted once, reloaded when the file changes on disk. Each request
    is kept as its JSON text in the file, with the instant and id it is sorted by (as parsed objects
    they took about 4 times the memory: 365 MB for the 147k requests of scale 10)."""

    def __init__(self, requests_path: Path) -> None:
        self.path = Path(requests_path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._rows: list[tuple[datetime, str, str]] = []

    def rows(self) -> list[tuple[datetime, str, str]]:
        """(updated instant, service_request_id, the request's JSON text), in that order."""
        stat = self.path.stat()
        with self._lock:
            if self._stamp != (stat.st_mtime_ns, stat.st_size):
                keyed = []
                for r, text in _elements(self.path.read_text()):
                    keyed.append((_instant(r["updated_datetime"]), str(r["service_request_id"]), text))
                keyed.sort(key=lambda kr: kr[:2])
                self._rows, self._stamp = keyed, (stat.st_mtime_ns, stat.st_size)
            return self._rows

    def services(self) -> list[dict]:
        path = self.path.parent / "services.json"
        if path.exists():
            return json.loads(path.read_text())
        # Without a services file, describe the codes that occur in the requests.
        seen = {r["service_code"]: r.get("service_name") for r in (json.loads(t) for *_, t in self.rows())}
        return [{"service_code": c, "service_name": n, "metadata": False, "type": "realtime"} for c, n in seen.items()]


_SEPARATOR = re.compile(r"[\s,]*")


def _elements(text: str) -> Iterator[tuple[dict, str]]:
    """Each element of a JSON array, parsed and as its text."""
    decoder = json.JSONDecoder()
    i = _SEPARATOR.match(text, 0).end()
    if text[i : i + 1] != "[":
        raise ValueError("the requests file must hold a JSON array")
    i = _SEPARATOR.match(text, i + 1).end()
    while text[i : i + 1] != "]":
        value, end = decoder.raw_decode(text, i)
        yield value, text[i:end]
        i = _SEPARATOR.match(text, end).end()


class _BadRequest(ValueError):
    pass


def _int_param(query: dict[str, list[str]], name: str, default: int, lo: int, hi: int | None = None) -> int:
    raw = query.get(name, [str(default)])[-1]
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer") from None
    if value < lo:
        raise _BadRequest(f"{name} must be >= {lo}")
    return min(value, hi) if hi is not None else value


def _page(store: _Store, query: dict[str, list[str]]) -> str:
    """A page of requests, as a JSON array."""
    page = _int_param(query, "page", 1, 1)
    size = _int_param(query, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    rows = store.rows()
    first = 0
    if "updated_after" in query:
        try:
            after = _instant(query["updated_after"][-1])
        except ValueError:
            raise _BadRequest("updated_after must be ISO 8601") from None
        first = bisect.bisect_right(rows, after, key=lambda kr: kr[0])  # the rows are sorted by instant
    return "[" + ",".join(text for *_, text in rows[first + (page - 1) * size : first + page * size]) + "]"


def _handler(store: _Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            try:
                if url.path == "/open311/v2/requests.json":
                    self._send(200, _page(store, query))
                elif url.path == "/open311/v2/services.json":
                    self._send(200, store.services())
                elif url.path == HEALTH_PATH:
                    self._send(200, {"simulator": "open311", "data": str(store.path.resolve())})
                else:
                    self._send(404, {"code": 404, "description": f"no such resource: {url.path}"})
            except _BadRequest as exc:
                self._send(400, {"code": 400, "description": str(exc)})

        def _send(self, status: int, body: object) -> None:
            """`body` as JSON (a str: JSON already)."""
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            try:
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                # the client went away before the whole page was sent (`citylake check` reads only the
                # status line): a normal event, not an error to print a traceback for
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            """Stay quiet: no per-request lines on stderr."""

    return Handler


@dataclass
class Open311Server:
    """A running server: `url` is the base, e.g. http://127.0.0.1:8311."""

    host: str
    port: int
    pid: int  # (its own process's)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


# (not `-m orchestration.reference_city.open311`: the package imports this module first, and runpy
# warns about running a module already imported)
_CHILD = "import sys; from orchestration.reference_city.open311 import serve; serve(*sys.argv[1:3], int(sys.argv[3]))"


@contextmanager
def running_open311(requests_path: Path, host: str = "127.0.0.1", port: int = 8311) -> Iterator[Open311Server]:
    """Serve requests_path from a process of its own for the duration of the block (port=0: any free
    port); a port that cannot be bound raises OSError, as binding it here would.

    Its own process, as a real agency system would be: it parses its file (147k requests at scale 10,
    about 2 s of Python) on the other core while the run starts up and loads the other sources, not
    inside the run's process holding its interpreter. It listens before it has parsed; a request
    arriving earlier waits for the parse. It ends when the block does, or when its parent dies (it
    watches its standard input, a pipe from this process)."""
    root = str(Path(__file__).resolve().parents[2])  # (the folder holding the orchestration package)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(requests_path), host, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = child.stdout.readline().split("\t")
        if line[0] == "error":
            raise OSError(int(line[1]), line[2].strip())
        if line[0] != "listening":
            raise RuntimeError(f"the Open311 simulator did not start (exit {child.wait(10)}); see its output above")
        yield Open311Server(host=host, port=int(line[1]), pid=child.pid)
    finally:
        child.stdin.close()  # (its cue to stop)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()


def serve(requests_path: str, host: str, port: int) -> None:
    """running_open311's process: bind, report the port (or why not) on stdout, parse, serve until
    standard input closes."""
    try:
        store = _Store(Path(requests_path))
        httpd = ThreadingHTTPServer((host, port), _handler(store))
    except OSError as exc:
        print(f"error\t{exc.errno or 0}\t{exc.strerror or exc}", flush=True)
        raise SystemExit(2) from None
    httpd.daemon_threads = True
    print(f"listening\t{httpd.server_address[1]}", flush=True)
    threading.Thread(target=store.rows, name="parse", daemon=True).start()
    threading.Thread(target=httpd.serve_forever, name="open311", daemon=True).start()
    sys.stdin.read()  # until the parent closes the pipe, or dies
    os._exit(0)  # (no shutdown handshake with request threads still writing: the process just ends)


def probe_open311(port: int, host: str = "127.0.0.1", timeout: float = 3.0) -> tuple[dict | None, str]:
    """Who answers on host:port: (the HEALTH_PATH answer of a citylake Open311 simulator, "") or (None,
    what answered instead)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}{HEALTH_PATH}", timeout=timeout) as response:
            body = json.loads(response.read(65536))
    except urllib.error.HTTPError as exc:
        return None, f"it answers {HEALTH_PATH} with HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return None, f"it does not answer {HEALTH_PATH} as one ({exc})"
    if isinstance(body, dict) and body.get("simulator") == "open311" and isinstance(body.get("data"), str):
        return body, ""
    return None, f"it answers {HEALTH_PATH} with something else"
