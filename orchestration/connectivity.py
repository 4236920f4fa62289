"""`citylake check`: can each source be reached? Messages never contain a secret's value."""

from __future__ import annotations

from orchestration.config import ConfigError, Source


def redact(text: str, source: Source) -> str:
    """Remove every resolved secret of the source from a message."""
    for key in ("dsn",):
        if source.get(key):
            try:
                text = text.replace(source.secret(key), f"<{key}>")
            except ConfigError:
                pass
    return text


def check_source(source: Source) -> tuple[bool, str]:
    """(reachable, what was found or why not)."""
    try:
        if source.kind in ("sqlite", "postgres", "mysql"):
            from orchestration.connectors.sql import connect, source_query

            conn = connect(source)
            try:
                sql, _ = source_query(source, None)
                cur = conn.cursor()
                cur.execute(f"select * from ({sql}) as probe limit 0")
                return True, f"{len(cur.description)} columns"
            finally:
                conn.close()
        if source.kind == "http_json":
            import urllib.request

            with urllib.request.urlopen(source.get("url"), timeout=10) as resp:
                return True, f"HTTP {resp.status}"
        if source.kind == "files":
            from orchestration.connectors.files import list_files

            n = len(list_files(source))
            return True, f"{n} file(s) match {source.get('path')}"
        return False, f"kind {source.kind} has no connector in this version"
    except ConfigError as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - any driver error: report it, redacted, go on to the next source
        return False, redact(f"{type(exc).__name__}: {exc}", source)
