"""HTTP JSON sources against a real HTTP server on loopback that injects 500s, 429s, timeouts and
truncated pages: every pagination style, the cursor parameter, auth headers from the environment,
retries, a clear failure after the last try, and no-op reruns."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from orchestration.config import ConfigError
from orchestration.connectivity import check_source
from orchestration.connectors.http_json import SourceUnavailable
from orchestration.ingest import SourceError
from tests.conftest import citylake
from tests.connectors_support import bronze_rows, one_source, quarantine_rows, run, version

TOKEN = "s3cret-token-value"
NEXT = {"style": "next", "next_path": "links.next"}
#: both credential headers an API may take
CREDENTIALS = {"X-Api-Key": "${TEST_API_KEY}", "Authorization": "Bearer ${TEST_API_KEY}"}


class Api:
    """Records and a queue of faults the next requests get (one fault per request)."""

    def __init__(self, n: int) -> None:
        self.records = [
            {"id": f"r{i:03d}", "status": "open", "updated": f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}Z"}
            for i in range(n)
        ]
        self.faults: list[str] = []
        self.requests: list[str] = []
        #: the headers of each request, in order (names in lower case)
        self.headers: list[dict[str, str]] = []
        #: page the records newest first (many APIs' default order), not in cursor order
        self.newest_first = False
        #: answer without the X-Api-Key header too (a CDN or another host that needs no credentials)
        self.open = False
        #: the next link of the /next style, `{start}` filled in; default: a relative link on this server
        self.next_link: str | None = None
        #: /moved/<rest> answers 302 to this base + /<rest> (default: the same server)
        self.redirect_to = ""


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
        api.headers.append({k.lower(): v for k, v in self.headers.items()})
        fault = api.faults.pop(0) if api.faults else None
        if fault == "500":
            return self._send(500, b'{"error": "boom"}')
        if fault == "429":
            return self._send(429, b"{}", {"Retry-After": "0"})
        if fault == "timeout":
            time.sleep(1.5)
        if self.path.startswith("/moved/"):
            return self._send(302, b"{}", {"Location": api.redirect_to + self.path[len("/moved") :]})
        if self.headers.get("X-Api-Key") != TOKEN and not api.open:
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
            nxt = api.next_link.format(start=start + size) if api.next_link else nxt
            body = {"data": rows[start : start + size], "links": {"next": nxt if start + size < len(rows) else None}}
        data = json.dumps(body).encode()
        if fault == "truncated":
            # the server promises the whole page and hangs up half way
            return self._send(200, data[: len(data) // 2], length=len(data))
        self._send(200, data)


@contextmanager
def _serve(state: Api) -> Iterator[str]:
    """A real HTTP server on a free loopback port serving `state`; yields its base URL."""
    handler = type("H", (Handler,), {"api": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api(monkeypatch) -> Iterator[tuple[Api, str]]:
    state = Api(50)
    monkeypatch.setenv("TEST_API_KEY", TOKEN)
    with _serve(state) as base:
        yield state, base


@pytest.fixture
def other() -> Iterator[tuple[Api, str]]:
    """A second server, on another port (another origin), that answers without credentials."""
    state = Api(50)
    state.open = True
    with _serve(state) as base:
        yield state, base


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
    first = run(cfg, src)
    assert first.rows_written == 50 and first.row_count == 50 and state.faults == []
    assert [r["id"] for r in bronze_rows(cfg, src)] == [f"r{i:03d}" for i in range(50)]
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


def _credentials(state: Api) -> list[tuple[str, str]]:
    """Every credential header (or the token anywhere in a header) the server received."""
    return [(k, v) for h in state.headers for k, v in h.items() if k in ("authorization", "x-api-key") or TOKEN in v]


@pytest.mark.parametrize("scheme", ["file", "ftp"])
def test_a_next_link_to_a_local_file_is_refused_and_nothing_of_it_lands(api, tmp_path, scheme):
    """The API's next link points at a JSON file on citylake's own machine (or at an FTP server):
    urllib would open either. The load stops naming the source and the link, and neither that file's
    records nor the first page's land in bronze or quarantine."""
    state, base = api
    secret = tmp_path / "secret.json"
    leaked = {"id": "s001", "status": "from-the-local-file", "updated": "2025-01-03T00:00:00Z"}
    secret.write_text(json.dumps({"data": [leaked, "not an object"], "links": {"next": None}}))
    state.next_link = secret.as_uri() if scheme == "file" else f"ftp://127.0.0.1:9/{secret.name}"
    cfg, src = one_source(tmp_path / "city", "svc", "requests", _spec(base, "/next", NEXT, records_path="data"))
    with pytest.raises(SourceUnavailable) as err:
        run(cfg, src)
    message = str(err.value)
    assert message.startswith("agencies.svc.requests: refused the API's next link")
    assert f"to {state.next_link}: citylake reads only http and https URLs" in message
    assert len(state.requests) == 1 and bronze_rows(cfg, src) == [] and quarantine_rows(cfg, src) == []


def test_a_next_link_to_another_origin_is_refused_unless_allowed_and_never_gets_credentials(api, other, tmp_path):
    """Another port is another origin: the link is refused before the other server hears anything, and
    the message shows its origin, not its query. Listed in allowed_origins it is followed, without the
    configured headers, which the url's own origin still gets."""
    state, base = api
    far, far_base = other
    state.next_link = far_base + "/next?start={start}"
    spec = _spec(base, "/next", NEXT, records_path="data", headers=CREDENTIALS)
    cfg, src = one_source(tmp_path / "refused", "svc", "requests", spec)
    with pytest.raises(SourceUnavailable) as err:
        run(cfg, src)
    message = str(err.value)
    assert message.startswith("agencies.svc.requests: refused the API's next link")
    assert f"its origin {far_base} is neither the url's ({base})" in message and "start=7" not in message
    assert far.requests == [] and bronze_rows(cfg, src) == [] and quarantine_rows(cfg, src) == []

    state.requests.clear()
    state.headers.clear()
    cfg, src = one_source(tmp_path / "allowed", "svc", "requests", {**spec, "allowed_origins": [far_base]})
    result = run(cfg, src)
    assert result.row_count == 50 and [r["id"] for r in bronze_rows(cfg, src)] == [f"r{i:03d}" for i in range(50)]
    assert state.requests == ["/next"] and len(far.requests) == 7 and _credentials(far) == []
    assert state.headers[0]["x-api-key"] == TOKEN and state.headers[0]["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("origin", ["http://localhost:{port}", "https://127.0.0.1:{port}"], ids=["host", "scheme"])
def test_an_origin_is_scheme_host_and_port(api, tmp_path, origin):
    """The same server reached under another host name or scheme is another origin: refused."""
    state, base = api
    link = origin.format(port=base.rsplit(":", 1)[1])
    state.next_link = link + "/next?start={start}"
    cfg, src = one_source(tmp_path, "svc", "requests", _spec(base, "/next", NEXT, records_path="data"))
    with pytest.raises(SourceUnavailable) as err:
        run(cfg, src)
    assert f"to {link}/next?...: its origin" in str(err.value)
    assert len(state.requests) == 1 and bronze_rows(cfg, src) == []


def test_a_redirect_to_another_origin_is_refused_and_one_within_the_origin_keeps_its_headers(api, other, tmp_path):
    state, base = api
    far, far_base = other
    spec = _spec(base, "/moved/page", {"size": 10}, headers=CREDENTIALS)
    # within the origin: /moved/page -> /page, followed with the credentials
    cfg, src = one_source(tmp_path / "same", "svc", "requests", spec)
    assert run(cfg, src).row_count == 50
    pages = [h for path, h in zip(state.requests, state.headers, strict=True) if path.startswith("/page?")]
    assert len(pages) == 6 and all(h["x-api-key"] == TOKEN and h["authorization"] == f"Bearer {TOKEN}" for h in pages)

    # to another origin: refused at once (not retried), the other server hears nothing
    state.redirect_to = far_base
    state.requests.clear()
    cfg, src = one_source(tmp_path / "far", "svc", "requests", spec)
    with pytest.raises(SourceUnavailable) as err:
        run(cfg, src)
    message = str(err.value)
    assert message.startswith(f"agencies.svc.requests: refused a redirect (HTTP 302) from {base}/moved/page?... to")
    assert f"its origin {far_base} is neither" in message and "page_size" not in message
    assert state.requests == ["/moved/page?page=1&page_size=10"] and far.requests == []
    assert bronze_rows(cfg, src) == []

    # allowed: followed, and the other origin gets no credentials
    cfg, src = one_source(tmp_path / "allowed", "svc", "requests", {**spec, "allowed_origins": [far_base + "/"]})
    assert run(cfg, src).row_count == 50
    assert len(far.requests) == 6 and _credentials(far) == []


def test_citylake_check_sends_no_credentials_to_a_redirect_on_another_origin(api, other, tmp_path):
    """`citylake check` probes with the load's client: a redirect elsewhere is a FAIL naming the origin,
    and the other server hears nothing; allowed, it is reached without the credentials."""
    state, base = api
    far, far_base = other
    state.redirect_to = far_base
    spec = _spec(base, "/moved/page", {"size": 10}, headers=CREDENTIALS)
    one_source(tmp_path / "refused", "svc", "requests", spec)
    checked = citylake("check", config=tmp_path / "refused" / "city.yaml", check=False)
    out = checked.stdout + checked.stderr
    assert checked.returncode == 1 and "FAIL svc/requests" in out and TOKEN not in out
    assert f"refused a redirect (HTTP 302) from {base}/moved/page to {far_base}/page: its origin {far_base}" in out
    assert state.requests == ["/moved/page"] and state.headers[0]["x-api-key"] == TOKEN and far.requests == []

    one_source(tmp_path / "allowed", "svc", "requests", {**spec, "allowed_origins": [far_base]})
    checked = citylake("check", config=tmp_path / "allowed" / "city.yaml", check=False)
    assert checked.returncode == 0 and "HTTP 200" in checked.stdout, checked.stdout + checked.stderr
    # reached twice (the probe, then the first page as a load asks for it), never with the credentials
    assert far.requests == ["/page", "/page?page=1&page_size=10"] and _credentials(far) == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "FILE:///tmp/requests.json", "ftp://127.0.0.1/requests.json", "/etc/passwd"]
)
def test_a_url_that_is_not_http_is_refused_by_config_validation_naming_the_key(tmp_path, url):
    with pytest.raises(ConfigError) as err:
        one_source(tmp_path, "svc", "requests", _spec("", url, {"size": 10}))
    assert str(err.value).startswith("agencies.svc.requests.url: citylake reads only http:// and https:// URLs")


def test_a_url_from_the_environment_that_is_not_http_is_refused_when_resolved(tmp_path, monkeypatch):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps([{"id": "s001", "status": "from-the-local-file", "updated": "2025"}]))
    monkeypatch.setenv("TEST_API_URL", secret.as_uri())
    monkeypatch.setenv("TEST_API_KEY", TOKEN)
    cfg, src = one_source(tmp_path, "svc", "requests", _spec("${TEST_API_URL}", "", {"size": 10}))
    with pytest.raises(ConfigError) as err:
        run(cfg, src)
    assert str(err.value) == (
        "agencies.svc.requests.url: citylake reads only http:// and https:// URLs with a host; got scheme 'file'"
    )
    assert bronze_rows(cfg, src) == [] and check_source(src) == (False, str(err.value))


@pytest.mark.parametrize(
    "origins",
    [
        "https://cdn.example.org",
        ["https://cdn.example.org/data"],
        ["file:///tmp"],
        ["cdn.example.org"],
        ["https://user:pw@cdn.example.org"],
        ["http://cdn.example.org:99999"],
        ["https://cdn.example.org?x=1"],
        [42],
    ],
)
def test_allowed_origins_take_only_origins_naming_the_key(tmp_path, origins):
    with pytest.raises(ConfigError) as err:
        one_source(tmp_path, "svc", "requests", _spec("http://127.0.0.1:1", "/x", {}, allowed_origins=origins))
    assert str(err.value).startswith("agencies.svc.requests.allowed_origins")
    good = ["https://cdn.example.org", "http://10.0.0.5:8080/", "http://[::1]:8080"]
    one_source(tmp_path, "svc", "requests", _spec("http://127.0.0.1:1", "/x", {}, allowed_origins=good))


def test_a_redirect_to_a_file_url_is_refused_without_showing_its_query(api, tmp_path):
    state, base = api
    state.redirect_to = tmp_path.as_uri()
    cfg, src = one_source(tmp_path, "svc", "requests", _spec(base, "/moved/page", {"size": 10}))
    with pytest.raises(SourceUnavailable) as err:
        run(cfg, src)
    assert str(err.value) == (
        f"agencies.svc.requests: refused a redirect (HTTP 302) from {base}/moved/page?... to "
        f"{tmp_path.as_uri()}/page?...: citylake reads only http and https URLs; the load stops"
    )
    assert len(state.requests) == 1 and bronze_rows(cfg, src) == []
