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


def post_alert(url: str, payload: dict, timeout: float = 10.0) -> None:
    """POST the payload; a webhook that is down must not hide the original failure, so errors are raised
    to the caller, which logs them."""
    req = urllib.request.Request(
        url, data=json.dumps(payload, default=str).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()
