"""Run-failure alerts: a JSON POST to the webhook named in city.yaml (`alerts: {webhook: URL}`).

The body carries the city, run, step and error, never a secret: the URL itself may hold a token
(`${ALERT_WEBHOOK_URL}`), so it is not repeated in logs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from orchestration.config import CityConfig, resolve_env


def webhook_url(cfg: CityConfig) -> str | None:
    url = (cfg.alerts or {}).get("webhook")
    return resolve_env(str(url), "alerts.webhook") if url else None


class AlertError(OSError):
    """The webhook could not be reached; the message never holds its URL (which may carry a token)."""


def post_alert(url: str, payload: dict, timeout: float = 10.0) -> None:
    """POST the payload; a webhook that is down must not hide the original failure, so errors are raised
    to the caller, which logs them (urllib quotes the whole URL in some errors: it is redacted)."""
    from orchestration.connectors import scrubbed

    try:
        req = urllib.request.Request(
            url,
            data=json.dumps(payload, default=str).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except (OSError, ValueError) as exc:
        clean = scrubbed(exc, {url, *_url_pieces(url)}, "alerts.webhook", AlertError)
        if clean is not None:
            raise clean from None
        raise


def _url_pieces(url: str) -> set[str]:
    """The path and query of a webhook URL: where a token sits (Slack, Teams and the like)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return {p for p in (parts.path, parts.query, parts.path.rsplit("/", 1)[-1]) if len(p) >= 6}
