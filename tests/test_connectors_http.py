"""HTTP JSON sources against a real HTTP server on loopback that injects 500s, 429s, timeouts and
truncated pages: every pagination style, the cursor parameter, auth headers from the environment,
retries, a clear failure after the last try, and no-op reruns."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from orchestration.connectivity import check_source
from orchestration.connectors.http_json import SourceUnavailable
from orchestration.ingest import SourceError
from tests.connectors_support import bronze_rows, one_source, run, version

TOKEN = "s3cret-token-value"


class Api:
    """Records and a queue of faults the next requests get (one fault per request)."""

    def __init__(self, n: int) -> None:
        self.records = [
            {"id": f"r{i:03d}", "status": "open", "updated": f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}Z"}
            for i in range(n)
        ]
        self.faults: list[str] = []
        self.requests: list[str] = []
        #: page the records newest first (many APIs' default order), not in cursor order
        self.newest_first = False


class Handler(BaseHTTPRequestHandler):
    api: Api

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length if length is not None else len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        api = self.api
        api.requests.append(self.path)
        fault = api.faults.pop(0) if api.faults else None
        if fault == "500":
            return self._send(500, b'{"error": "boom"}')
        if fault == "429":
            return self._send(429, b"{}", {"Retry-After": "0"})
        if fault == "timeout":
            time.sleep(1.5)
        if self.headers.get("X-Api-Key") != TOKEN:
            return self._send(401, b'{"error": "no key"}')
        u = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        rows = [r for r in api.records if "updated_after" not in q or r["updated"] >= q["updated_after"]]
        if api.newest_first:
            rows = sorted(rows, key=lambda r: r["updated"], reverse=True)
        if u.path == "/page":
            size, page = int(q.get("page_size", 10)), int(q.get("page", 1))
            body = rows[(page - 1) * size : page * size]
        elif u.path == "/offset":
            body = rows[int(q["offset"]) : int(q["offset"]) + int(q["limit"])]
        else:  # next-link style, records nested under "data"
            start, size = int(q.get("start", 0)), 7
            nxt = f"/next?start={start + size}" + (
                f"&updated_after={q['updated_after']}" if "updated_after" in q else ""
            )
            body = {"data": rows[start : start + size], "links": {"next": nxt if start + size < len(rows) else None}}
        data = json.dumps(body).encode()
        if fault == "truncated":
            # the server promises the whole page and hangs up half way
            return self._send(200, data[: len(data) // 2], length=len(data))
        self._send(200, data)


@pytest.fixture
def api(monkeypatch) -> Iterator[tuple[Api, str]]:
    state = Api(50)
    handler = type("H", (Handler,), {"api": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TEST_API_KEY", TOKEN)
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _spec(base: str, path: str, pagination: dict, **extra) -> dict:
    return {
        "kind": "http_json",
        "url": base + path,
        "pagination": pagination,
        "cursor": {"field": "updated", "param": "updated_after"},
        "headers": {"X-Api-Key": "${TEST_API_KEY}"},
        "primary_key": ["id"],
        "timeout_s": 0.5,
        "max_retries": 4,
        "backoff_s": 0.01,
        **extra,
    }


@pytest.mark.parametrize(
    ("path", "pagination", "extra"),
    [
        ("/page", {"param": "page", "size_param": "page_size", "size": 10}, {}),
        ("/offset", {"style": "offset", "param": "offset", "size_param": "limit", "size": 10}, {}),
        ("/next", {"style": "next", "next_path": "links.next"}, {"records_path": "data"}),
    ],
)
def test_pagination_styles_with_faults_cursor_and_noop_rerun(api, tmp_path, path, pagination, extra):
    state, base = api
    cfg, src = one_source(tmp_path, "svc", "requests", _spec(base, path, pagination, **extra))
    state.faults = ["500", "429", "truncated", "timeout"]
    t0 = time.perf_counter()
    first = run(cfg, src)
    assert first.rows_written == 50 and first.row_count == 50 and state.faults == []
    assert [r["id"] for r in bronze_rows(cfg, src)] == [f"r{i:03d}" for i in range(50)]
    assert time.perf_counter() - t0 < 10
    v1 = version(cfg, src)

    # rerun: the cursor (max `updated`) is sent, only the boundary record comes back, unchanged
    state.requests.clear()
    again = run(cfg, src, "run-2")
    assert "updated_after=2025-01-01T00%3A00%3A49Z" in state.requests[0]
    assert again.rows_read == 1 and again.rows_written == 0 and version(cfg, src) == v1

    # one record changes and two are new
    state.records[49] = {**state.records[49], "status": "closed", "updated": "2025-01-02T00:00:00Z"}
    state.records += [{"id": f"r{i:03d}", "status": "open", "updated": "2025-01-02T00:00:01Z"} for i in (50, 51)]
    third = run(cfg, src, "run-3")
    assert third.rows_written == 3 and third.row_count == 52
    rows = {r["id"]: r for r in bronze_rows(cfg, src)}
    assert rows["r049"]["status"] == "closed" and rows["r049"]["_batch"] == "run-3"


def test_clear_failure_after_the_last_try_names_source_and_error(api, tmp_path):
    state, base = api
    cfg, src = one_source(tmp_path, "svc", "requests", _spec(base, "/page", {"size": 10}))
    state.faults = ["500"] * 5
    with pytest.raises(SourceUnavailable) as err:
        run(cfg, src)
    message = str(err.value)
    assert "agencies.svc.requests" in message and "failed after 5 tries" in message and "HTTP 500" in message
    assert len(state.requests) == 5


def test_auth_header_secret_never_appears_in_errors_or_check(api, tmp_path, monkeypatch):
    state, base = api
    cfg, src = one_source(tmp_path, "svc", "requests", _spec(base, "/page?key=${TEST_API_KEY}", {"size": 10}))
    monkeypatch.setenv("TEST_API_KEY", "wrong-" + TOKEN)
    with pytest.raises((SourceUnavailable, SourceError)) as err:
        run(cfg, src)
    assert "HTTP 401" in str(err.value) and TOKEN not in str(err.value)
    ok, detail = check_source(src)
    assert not ok and "401" in detail and TOKEN not in detail
    monkeypatch.setenv("TEST_API_KEY", TOKEN)
    ok, detail = check_source(src)
    assert ok and detail.startswith("HTTP 200, first page: ") and "primary key and cursor found" in detail, detail


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest-first", "newest-first"])
def test_a_load_failing_mid_pagination_then_recovering_skips_and_repeats_nothing(api, tmp_path, newest_first):
    """The API answers pages 1 and 2, then HTTP 500 past the last retry on page 3; the next load, with
    the API back, gets every record exactly once. The cursor moves only with a load that read every
    page, so the API's page order (oldest or newest first) cannot make it skip records."""
    state, base = api
    state.newest_first = newest_first
    cfg, src = one_source(tmp_path, "svc", "requests", _spec(base, "/page", {"size": 10}))
    state.faults = ["none", "none"] + ["500"] * 5
    with pytest.raises(SourceUnavailable) as err:
        run(cfg, src)
    assert "agencies.svc.requests" in str(err.value) and "HTTP 500" in str(err.value)
    assert len(state.requests) == 7 and bronze_rows(cfg, src) == []

    state.requests.clear()
    again = run(cfg, src, "run-2")
    assert "updated_after" not in state.requests[0]
    assert again.rows_read == again.rows_written == again.row_count == 50
    rows = bronze_rows(cfg, src)
    assert [r["id"] for r in rows] == [f"r{i:03d}" for i in range(50)] and {r["_batch"] for r in rows} == {"run-2"}

    # the next load starts at the newest record loaded, whatever the page order
    state.requests.clear()
    state.records.append({"id": "r050", "status": "open", "updated": "2025-01-02T00:00:00Z"})
    third = run(cfg, src, "run-3")
    assert "updated_after=2025-01-01T00%3A00%3A49Z" in state.requests[0]
    assert third.rows_read == 2 and third.rows_written == 1 and third.row_count == 51


def test_a_record_on_two_pages_of_one_load_lands_once_as_its_last_copy(api, tmp_path):
    state, base = api
    # r003 is updated while the client pages through: the API serves it on page 1 and again on page 6
    state.records.append({**state.records[3], "status": "closed", "updated": "2025-01-02T00:00:00Z"})
    cfg, src = one_source(tmp_path, "svc", "requests", _spec(base, "/page", {"size": 10}))
    result = run(cfg, src)
    rows = {r["id"]: r for r in bronze_rows(cfg, src)}
    assert result.rows_read == 51 and result.row_count == len(rows) == 50 and result.quarantined == 0
    assert rows["r003"]["status"] == "closed" and rows["r003"]["updated"] == "2025-01-02T00:00:00Z"
