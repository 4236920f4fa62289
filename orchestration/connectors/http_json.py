"""HTTP JSON APIs (Open311 GeoReport v2 works as is): pagination, a cursor parameter, auth headers,
retries with exponential backoff and jitter on 429, 5xx, timeouts and truncated bodies.

Source keys:
- url (may hold `${VAR}`; messages show it unresolved, so a token in the URL is never printed)
- pagination: `{param: page, size_param: page_size, size: 1000}` (page numbers from `start`, 1);
  `{style: offset, param: offset, size_param: limit, size: 500}`; or
  `{style: next, next_path: links.next}` (the next page's URL in the body; without next_path, the
  `Link: <...>; rel="next"` header). Page and offset styles stop at the first short page.
- cursor: `{field, param}`: the stored maximum of `field` is sent as `param` (first request only for
  next-link paging, whose links carry it on)
- headers: `{Authorization: "Bearer ${TOKEN}"}` (values resolved from the environment)
- records_path (a dotted path when the array is nested in an object), timeout_s (30),
  max_retries (5), backoff_s (0.5: the first wait; doubles each try, jittered, capped at 30 s)
- allowed_origins: `["https://cdn.example.org", "http://10.0.0.5:8080"]` (scheme://host[:port]), the
  other origins a next link or a redirect may lead to

Where citylake reads: only http and https (never file://, ftp://), and only the origin of `url`
(scheme, host and port) plus `allowed_origins`. A next link or a redirect (each hop) anywhere else
stops the load before that URL is requested: the error names the source and the refused origin (never
the URL's query), and nothing of the load lands. The configured `headers` (credentials) are sent only
to the origin of `url`: a page or a redirect on an allowed other origin is requested without them, so
an allowed CDN never sees a token; an API whose other origin needs credentials must put them in the
URLs it links to.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from orchestration.config import ConfigError, Source, http_origin
from orchestration.connectors import Landing, Rejected, text_table

RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
PAGINATION_STYLES = ("page", "offset", "next")
#: a runaway API (a next link pointing at itself) stops here instead of looping forever
MAX_PAGES = 100_000
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class SourceUnavailable(RuntimeError):
    """The source still failed after the last retry, or answered something citylake cannot use."""


def shown_url(url: str) -> str:
    """A URL as messages show it: no user:password@, no query (where tokens travel), at most 200 characters."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed [ in the host
        return "an unreadable URL"
    netloc = parts.netloc.rpartition("@")[2]
    return (f"{parts.scheme}://{netloc}{parts.path}" + ("?..." if parts.query else ""))[:200]


def _origin_text(origin: tuple[str, str, int]) -> str:
    scheme, host, port = origin
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


class Client:
    """The source's HTTP client: it requests only http(s) URLs on the `url:` origin or `allowed_origins`,
    checks every redirect hop the same way, and sends the configured headers only to the `url:` origin."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.raw_url = str(source.get("url"))
        self.url = source.secret_value(self.raw_url, "url")
        home = http_origin(self.url)
        if home is None:
            scheme = urllib.parse.urlsplit(self.url).scheme if "://" in self.url else ""
            raise ConfigError(
                f"{source.where}.url: citylake reads only http:// and https:// URLs with a host; "
                f"got {f'scheme {scheme[:20]!r}' if scheme else 'no scheme'}"
            )
        self.home = home
        self.allowed = {home, *(http_origin(str(o)) for o in source.get("allowed_origins") or [])}
        self.headers = {k: source.secret_value(v, f"headers.{k}") for k, v in (source.get("headers") or {}).items()}
        self.opener = urllib.request.OpenerDirector()
        # no file://, ftp:// or data: handler: only http(s) can be opened at all
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.ProxyHandler(),
            urllib.request.UnknownHandler(),
            urllib.request.HTTPHandler(),
            urllib.request.HTTPDefaultErrorHandler(),
            _Redirects(self),
            urllib.request.HTTPErrorProcessor(),
        ]
        if hasattr(urllib.request, "HTTPSHandler"):
            handlers.append(urllib.request.HTTPSHandler())
        for handler in handlers:
            self.opener.add_handler(handler)

    def check(self, url: str, what: str) -> None:
        """Raise SourceUnavailable unless `url` may be requested; `what` says where it came from."""
        origin = http_origin(url)
        if origin in self.allowed:
            return
        if origin is None:
            why = "citylake reads only http and https URLs"
        else:
            why = (
                f"its origin {_origin_text(origin)} is neither the url's ({_origin_text(self.home)}) "
                f"nor in allowed_origins (add it to {self.source.where}.allowed_origins to read it)"
            )
        raise SourceUnavailable(f"{self.source.where}: refused {what} to {shown_url(url)}: {why}; the load stops")

    def request(self, url: str) -> urllib.request.Request:
        """A GET of `url`, with the configured headers only when `url` is on the `url:` origin."""
        own = self.headers if http_origin(url) == self.home else {}
        return urllib.request.Request(url, headers={"Accept": "application/json", **own})

    def open(self, url: str, timeout: float) -> http.client.HTTPResponse:
        self.check(url, "a request")
        return self.opener.open(self.request(url), timeout=timeout)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL the client may request, and rebuilds the request's headers for
    the new URL (urllib's own handler copies every header, credentials included, to any host)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def _check(self, req: urllib.request.Request, fp: Any, code: int, url: str) -> None:
        try:
            self.client.check(url, f"a redirect (HTTP {code}) from {shown_url(req.full_url)}")
        except SourceUnavailable:
            fp.close()
            raise

    def http_error_302(self, req, fp, code, msg, headers):
        # before urllib's own scheme check, which would put the whole target URL in its message
        location = headers.get("location") or headers.get("uri")
        if location:
            self._check(req, fp, code, urllib.parse.urljoin(req.full_url, location))
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self._check(req, fp, code, newurl)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.headers = self.client.request(new.full_url).headers
        return new


def _get(client: Client, url: str, shown: str) -> tuple[Any, http.client.HTTPMessage]:
    """GET url as JSON with retries; `shown` is the URL as it may appear in messages."""
    source = client.source
    timeout = float(source.get("timeout_s"))
    retries = int(source.get("max_retries"))
    backoff = float(source.get("backoff_s"))
    last = ""
    for attempt in range(retries + 1):
        wait = 0.0
        try:
            with client.open(url, timeout) as resp:
                return json.loads(resp.read().decode("utf-8")), resp.headers
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_STATUSES:
                raise SourceUnavailable(
                    f"{source.where}: {shown} answered HTTP {exc.code} {exc.reason}; not retried "
                    "(check url, headers and credentials)"
                ) from None
            last = f"HTTP {exc.code}"
            retry_after = exc.headers.get("Retry-After") or ""
            wait = min(60.0, float(retry_after)) if retry_after.strip().isdigit() else 0.0
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            # HTTPException covers IncompleteRead: the server closed mid-body (a truncated page)
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or a number of 4300+ digits
            last = f"a truncated or non-JSON body ({exc})"
        except RecursionError:
            last = "a JSON body nested too deeply to read (more than about 900 levels)"
        if attempt < retries:
            time.sleep(max(wait, min(30.0, backoff * 2**attempt) * (0.5 + random.random())))
    raise SourceUnavailable(f"{source.where}: {shown} failed after {retries + 1} tries; last error: {last}")


def _dig(body: Any, path: str | None) -> Any:
    for part in path.split(".") if path else []:
        body = body.get(part) if isinstance(body, dict) else None
    return body


def _records(body: Any, path: str | None, where: str) -> list:
    records = _dig(body, path)
    if not isinstance(records, list):
        raise SourceUnavailable(
            f"{where}: expected a JSON array of records at '{path or '(top level)'}', "
            f"got {type(records).__name__}; set records_path"
        )
    return records


def _with_params(url: str, params: dict[str, Any]) -> str:
    if not params:
        return url
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)


def pagination(source: Source) -> dict[str, Any]:
    """The source's pagination block with defaults filled in; a wrong style names the key."""
    paging = dict(source.get("pagination") or {})
    if not paging:
        return {}
    style = paging.get("style", "page")
    if style not in PAGINATION_STYLES:
        raise SourceUnavailable(
            f"{source.where}.pagination.style: '{style}' is not supported; use one of {', '.join(PAGINATION_STYLES)}"
        )
    paging["style"] = style
    if style == "page":
        paging.setdefault("param", "page")
        paging.setdefault("size_param", "page_size")
    elif style == "offset":
        paging.setdefault("param", "offset")
        paging.setdefault("size_param", "limit")
    paging["size"] = int(paging.get("size", 1000))
    return paging


def read_http_json(source: Source, cursor: Any | None) -> Iterator[Landing]:
    """Every page past `cursor`, one Landing per page (non-object records are rejected)."""
    client = Client(source)
    raw_url, url = client.raw_url, client.url
    paging = pagination(source)
    style = paging.get("style")
    cur = source.get("cursor")
    params: dict[str, Any] = {}
    if isinstance(cur, dict) and cursor is not None and cur.get("param"):
        params[cur["param"]] = cursor
    position = int(paging.get("start", 1)) if style == "page" else 0
    next_url: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        if style in ("page", "offset"):
            params[paging["param"]] = position
            params[paging["size_param"]] = paging["size"]
        full = next_url or _with_params(url, params)
        shown = full.replace(url, raw_url) if next_url is None else shown_url(full)
        body, resp_headers = _get(client, full, shown)
        records = _records(body, source.get("records_path"), source.where)
        good = [r for r in records if isinstance(r, dict)]
        rejected = [_reject(r, f"{shown} item {i}") for i, r in enumerate(records) if not isinstance(r, dict)]
        if good or rejected:
            yield Landing(rows=text_table(good), rejected=rejected)
        if style in ("page", "offset"):
            if len(records) < paging["size"] or not records:
                return
            position += 1 if style == "page" else len(records)
        elif style == "next":
            link = _dig(body, paging.get("next_path")) if paging.get("next_path") else None
            if not link and not paging.get("next_path"):
                match = _LINK_NEXT.search(resp_headers.get("Link") or "")
                link = match.group(1) if match else None
            if not link or not records:
                return
            next_url = urllib.parse.urljoin(full, str(link))
            client.check(next_url, f"the API's next link (on {shown})")
            if next_url in seen:
                raise SourceUnavailable(
                    f"{source.where}: the API's next link repeats ({shown_url(next_url)}); stopping"
                )
            seen.add(next_url)
        else:
            return
    raise SourceUnavailable(f"{source.where}: more than {MAX_PAGES} pages; check the pagination settings")


def _reject(record: Any, location: str) -> Rejected:
    return Rejected(record=json.dumps(record), reason="not a JSON object", location=location)
