"""HTTP JSON APIs (Open311 GeoReport v2 works as is): pagination, a cursor parameter, auth headers,
retries with exponential backoff and jitter on 429, 5xx and timeouts.

Source keys: url; pagination {param, size_param, size} (page numbers from 1); cursor {field, param};
headers {Name: "${ENV_VAR}"}; records_path (a dotted path when the array is nested in an object);
timeout_s (30); max_retries (5).
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from orchestration.config import Source
from orchestration.connectors import Landing, Rejected, text_table

RETRY_STATUSES = {429, 500, 502, 503, 504}


class SourceUnavailable(RuntimeError):
    """The source still failed after the last retry."""


def _get(url: str, headers: dict[str, str], timeout: float, retries: int, where: str) -> Any:
    last = ""
    for attempt in range(retries + 1):
        try:
            req = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_STATUSES:
                raise SourceUnavailable(f"{where}: {url} answered HTTP {exc.code}; not retried") from None
            last = f"HTTP {exc.code}"
            wait = float(exc.headers.get("Retry-After") or 0)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            wait = 0.0
        except json.JSONDecodeError as exc:
            last = f"a truncated or non-JSON body ({exc.msg} at char {exc.pos})"
            wait = 0.0
        if attempt < retries:
            time.sleep(max(wait, min(30.0, 0.25 * 2**attempt) * (0.5 + random.random())))
    raise SourceUnavailable(f"{where}: {url} failed after {retries + 1} tries; last error: {last}")


def _records(body: Any, path: str | None, where: str) -> list[dict]:
    for part in path.split(".") if path else []:
        body = body.get(part) if isinstance(body, dict) else None
    if not isinstance(body, list):
        raise SourceUnavailable(
            f"{where}: expected a JSON array of records at '{path or '(top level)'}', "
            f"got {type(body).__name__}; set records_path"
        )
    return body


def read_http_json(source: Source, cursor: Any | None) -> Iterator[Landing]:
    url = source.get("url")
    headers = {k: source.secret_value(v, f"headers.{k}") for k, v in (source.get("headers") or {}).items()}
    paging = source.get("pagination") or {}
    cur = source.get("cursor")
    params: dict[str, Any] = {}
    if isinstance(cur, dict) and cursor is not None and cur.get("param"):
        params[cur["param"]] = cursor
    page = 1
    size = int(paging.get("size", 1000))
    while True:
        if paging:
            params[paging.get("param", "page")] = page
            params[paging.get("size_param", "page_size")] = size
        sep = "&" if "?" in url else "?"
        full = url + (sep + urllib.parse.urlencode(params) if params else "")
        records = _records(
            _get(full, headers, float(source.get("timeout_s", 30)), int(source.get("max_retries", 5)), source.where),
            source.get("records_path"),
            source.where,
        )
        good = [r for r in records if isinstance(r, dict)]
        rejected = [_reject(r, f"{full} item {i}") for i, r in enumerate(records) if not isinstance(r, dict)]
        if good or rejected:
            yield Landing(rows=text_table(good), rejected=rejected)
        if not paging or len(records) < size:
            break
        page += 1


def _reject(record: Any, location: str) -> Rejected:
    return Rejected(record=json.dumps(record), reason="not a JSON object", location=location)
