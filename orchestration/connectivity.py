"""`citylake check`: can each source be reached? Messages never contain a secret's value."""

from __future__ import annotations

from orchestration.config import ConfigError, Source, pii_key
from orchestration.connectors import redact

#: an http_json probe waits this long unless the source sets timeout_s (its reads wait 30 s by default)
PROBE_TIMEOUT_S = 10

__all__ = ["check_source", "redact"]


def check_source(source: Source) -> tuple[bool, str]:
    """(reachable, what was found or why not); the text is redacted of every secret of the source."""
    try:
        if source.personal_data.get("hash"):
            pii_key(source.where)  # the load would fail without it: say so here
        ok, detail = _probe(source)
    except ConfigError as exc:
        return False, redact(str(exc), source)
    except Exception as exc:  # noqa: BLE001 - any driver error: report it, redacted, go on to the next source
        return False, redact(f"{type(exc).__name__}: {exc}", source)
    return ok, redact(detail, source)


def _probe(source: Source) -> tuple[bool, str]:
    if source.kind in ("sqlite", "postgres", "mysql"):
        from orchestration.connectors.sql import connect, source_query

        conn = connect(source)
        try:
            sql, _ = source_query(source, None)
            cur = conn.cursor()
            cur.execute(f"select * from ({sql}) as probe limit 0")
            names = [d[0] for d in cur.description]
        finally:
            conn.close()
        missing = [c for c in (*source.primary_key, source.get("cursor") or "") if c and c not in names]
        if missing:
            return False, (
                f"{len(names)} columns, but not {', '.join(missing)} (primary_key / cursor); "
                f"the source has {', '.join(names)}"
            )
        return True, f"{len(names)} columns"
    if source.kind == "http_json":
        import urllib.error
        import urllib.request

        from orchestration.connectors.http_json import pagination

        pagination(source)  # a wrong style is a config error worth reporting here
        url = source.secret_value(source.get("url"), "url")
        headers = {k: source.secret_value(v, f"headers.{k}") for k, v in (source.get("headers") or {}).items()}
        req = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=float(source.raw.get("timeout_s", PROBE_TIMEOUT_S))) as resp:
                return True, f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            return False, f"HTTP {exc.code} {exc.reason} from {source.get('url')}"
    if source.kind == "files":
        from orchestration.connectors.files import list_files

        n = len(list_files(source))
        return True, f"{n} file(s) match {source.get('path')}"
    if source.kind == "mqtt":
        import paho.mqtt.client as mqtt

        from orchestration.connectors.mqtt import broker, pending_batches

        b = broker(source)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
        if b["username"]:
            client.username_pw_set(b["username"], b["password"])
        if b["tls"]:
            client.tls_set()
        client.connect(b["host"], b["port"], keepalive=10)
        client.disconnect()
        return True, f"broker {b['host']}:{b['port']} reachable, {len(pending_batches(source))} batch(es) waiting"
    return False, f"kind {source.kind} has no connector"
