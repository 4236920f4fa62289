"""Secrets come only from the environment and are written nowhere, for real: `citylake run` and `citylake
check` on a small reference city plus sources that carry secrets (a PostgreSQL password in a DSN, an API
token in a header and in a URL, an alert webhook token, the personal-data HMAC key and a PostgreSQL sink),
three of which fail in ways that put a secret in the driver's own error message (a password with an
unescaped '@' makes libpq report part of it as the host; one with a stray '%' is quoted whole; a closed
port). Every output is then searched for every secret: the command's stdout and stderr, every file under
the lake and the state folder (run logs, dbt logs and target/ artefacts, the Dagster instance's SQLite
run and event-log storage with its compressed snapshots, Delta logs), every row of every Parquet file,
DuckDB and SQLite table, and the alerts the webhook received.

The Dagster UI serves what this storage holds (runs, event logs, asset metadata); starting a webserver
to ask it again through GraphQL would add about a minute, so the storage is searched directly."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from http.server import ThreadingHTTPServer

import pytest
import yaml

from orchestration import lake
from orchestration.config import load_config
from tests.conftest import CityRun, citylake, free_port, write_city_config
from tests.connectors_support import PG_DSN
from tests.lake_scan import search
from tests.test_connectors_http import TOKEN as API_KEY
from tests.test_connectors_http import Api
from tests.test_connectors_http import Handler as ApiHandler

TAG = secrets.token_hex(6)
SECRET = f"s3cr3t-{TAG}"  # the PostgreSQL password
TOKEN = f"t0ken-{secrets.token_hex(6)}"  # an API token in the URL
HOOK = f"h00k-{secrets.token_hex(6)}"  # the alert webhook's path token
PII_KEY = f"p11key-{secrets.token_hex(8)}"  # the personal-data HMAC key
ALL = [SECRET, TOKEN, API_KEY, HOOK, PII_KEY]  # API_KEY: the API's X-Api-Key header
TABLE = f"permits_{TAG}"
SINK_SCHEMA = f"citylake_secrets_{TAG}"


class Hooks(ApiHandler):
    """The connector tests' API (it answers only with the X-Api-Key header), which also takes alert POSTs."""

    alerts: list[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if self.path == f"/hook/{HOOK}":
            self.alerts.append(body)
        self._send(204, b"")


def _pg():
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {exc}")


@dataclass
class SecretRun:
    run: CityRun
    outputs: dict[str, str]
    api: Api
    alerts: list[str]
    run_code: int


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretRun]:
    from orchestration.reference_city import generate

    conn = _pg()
    conn.execute(f"create table {TABLE} (permit_id text primary key, street text)")
    conn.execute(f"insert into {TABLE} values ('A1', 'Quay Street'), ('A2', 'Mill Lane'), ('A3', 'Elm Row')")
    api_state, alerts = Api(5), []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Hooks,), {"api": api_state, "alerts": alerts}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api = f"http://127.0.0.1:{server.server_address[1]}"
    root = tmp_path_factory.mktemp("secrets")
    generate(root / "riverton", scale=0.2, days=30, start=date(2025, 2, 1), seed=5)
    config = write_city_config(root, root / "riverton", root / "lake", partitioned=False)
    run = CityRun(root, config, root / "riverton", root / "lake", root / "state")
    cfg = yaml.safe_load(run.config.read_text())
    good_dsn = "postgresql://postgres:${CITYLAKE_TEST_PG_PASSWORD}@127.0.0.1:5432/test"
    pg = {"kind": "postgres", "table": TABLE, "primary_key": ["permit_id"]}
    cfg["agencies"]["permits"] = {
        "street_works": {**pg, "dsn": good_dsn},
        # a password with an unescaped '@': libpq takes what follows it for the host and names it
        "street_works_at": {**pg, "dsn": "postgresql://postgres:${CITYLAKE_TEST_PG_PASSWORD_AT}@127.0.0.1:5432/test"},
        # a stray '%': "invalid percent-encoded token" quotes the whole password
        "street_works_pct": {**pg, "dsn": "postgresql://postgres:${CITYLAKE_TEST_PG_PASSWORD_PCT}@127.0.0.1/test"},
        # nothing listens there
        "street_works_down": {**pg, "dsn": good_dsn.replace("5432", str(free_port()))},
        "api": {
            "kind": "http_json",
            "url": f"{api}/page?api_key=${{CITYLAKE_TEST_API_TOKEN}}",
            "pagination": {"size": 10},
            "headers": {"X-Api-Key": "${CITYLAKE_TEST_API_KEY}"},
            "primary_key": ["id"],
        },
        "api_down": {
            "kind": "http_json",
            "url": f"http://127.0.0.1:{free_port()}/page?api_key=${{CITYLAKE_TEST_API_TOKEN}}",
            "headers": {"X-Api-Key": "${CITYLAKE_TEST_API_KEY}"},
            "primary_key": ["id"],
            "max_retries": 0,
        },
    }
    cfg["alerts"] = {"webhook": f"{api}/hook/${{CITYLAKE_TEST_WEBHOOK_TOKEN}}"}
    # the sink's password has the '@' too: its failure must not name it either
    cfg["sinks"] = {"postgres": {"dsn": cfg["agencies"]["permits"]["street_works_at"]["dsn"], "schema": SINK_SCHEMA}}
    run.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {
        "CITYLAKE_TEST_PG_PASSWORD": SECRET,
        "CITYLAKE_TEST_PG_PASSWORD_AT": f"p@{SECRET}",
        "CITYLAKE_TEST_PG_PASSWORD_PCT": f"{SECRET}%zz",
        "CITYLAKE_TEST_API_TOKEN": TOKEN,
        "CITYLAKE_TEST_API_KEY": API_KEY,
        "CITYLAKE_TEST_WEBHOOK_TOKEN": HOOK,
        "CITYLAKE_PII_KEY": PII_KEY,
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        ran = citylake("run", config=run.config, check=False)
        checked = citylake("check", config=run.config, check=False)
    outputs = {
        "run stdout": ran.stdout,
        "run stderr": ran.stderr,
        "check stdout": checked.stdout,
        "check stderr": checked.stderr,
    }
    try:
        yield SecretRun(run, outputs, api_state, alerts, ran.returncode)
    finally:
        server.shutdown()
        server.server_close()
        conn.execute(f"drop table if exists {TABLE}")
        conn.execute(f"drop schema if exists {SINK_SCHEMA} cascade")
        conn.close()


def _bronze(run: CityRun, agency: str, source: str) -> list[dict]:
    cfg = load_config(run.config)
    table = lake.read_table(lake.bronze_uri(cfg, agency, source))
    return table.to_pylist() if table is not None else []


def test_the_secrets_were_used_and_the_broken_sources_failed(secret_run: SecretRun) -> None:
    """The control: each secret did its job, so finding none of them below means something."""
    run, out = secret_run.run, secret_run.outputs
    assert secret_run.run_code == 1, out["run stdout"][-3000:]
    assert {r["permit_id"] for r in _bronze(run, "permits", "street_works")} == {"A1", "A2", "A3"}
    # the API answers only with the header's key; the URL's token reached it
    assert len(_bronze(run, "permits", "api")) == 5 and f"api_key={TOKEN}" in secret_run.api.requests[0]
    requests = json.loads((run.city_dir / "open311" / "requests.json").read_text())
    email = {r["service_request_id"]: r["email"] for r in requests}
    row = next(r for r in _bronze(run, "service_requests", "requests") if r["email"])
    expected = hmac.new(PII_KEY.encode(), email[row["service_request_id"]].encode(), hashlib.sha256).hexdigest()
    assert row["email"] == expected, "the personal-data key hashed the emails"
    failed = [line for line in out["run stderr"].splitlines() if "FAILED" in line]
    for source in ("street_works_at", "street_works_pct", "street_works_down", "api_down"):
        assert any(f"bronze__permits__{source}" in line for line in failed), (source, failed)
    assert any("Connection refused" in line and "street_works_down" in line for line in failed), failed
    assert any("api_down" in line and "failed after 1 tries" in line for line in failed), failed
    assert any("published__postgres" in line for line in failed), failed
    assert len(secret_run.alerts) >= 5, "the webhook (with its token) received the failures"
    assert "FAIL" in out["check stdout"] and "ok   permits/street_works " in out["check stdout"]


def test_no_secret_in_any_output_or_stored_byte(secret_run: SecretRun) -> None:
    run = secret_run.run
    for name, text in secret_run.outputs.items():
        leaked = [s for s in ALL if s in text]
        assert not leaked, f"{name} holds {leaked}:\n{text[-2000:]}"
    for body in secret_run.alerts:
        assert not [s for s in ALL if s in body], body
    roots = [run.lake, run.state]
    assert (run.state / "dagster" / "history").exists() and (run.state / "logs").exists()
    hits = search(roots, ALL)
    assert hits == [], "\n".join(hits[:20])


def test_errors_name_the_source_and_the_cause_without_the_secret(secret_run: SecretRun) -> None:
    failed = {
        source: line
        for line in secret_run.outputs["run stderr"].splitlines()
        for source in ("bronze__permits__street_works_at", "bronze__permits__street_works_pct", "published__postgres")
        if source in line
    }
    at, pct, sink = failed.values()
    assert "agencies.permits.street_works_at" in at and "failed to resolve host '<redacted>@127.0.0.1'" in at, at
    assert "invalid percent-encoded token" in pct and "<redacted>" in pct, pct
    assert "sinks.postgres" in sink and "'<redacted>@127.0.0.1'" in sink, sink


def test_a_webhook_url_is_not_repeated_in_its_errors() -> None:
    from orchestration.alerts import post_alert

    for url in (f"hooks.example/services/{HOOK}", f"http://127.0.0.1:{free_port()}/hook/{HOOK}"):
        with pytest.raises(OSError) as err:
            post_alert(url, {"error": "x"})
        assert HOOK not in str(err.value) and HOOK not in repr(err.value.__cause__), err.value


def test_a_lake_on_s3_keeps_its_credentials_out_of_options_files_and_errors(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object store's credentials stay in the environment: not in the options handed to delta-rs, not in
    the dbt sources citylake generates from them, not in an error (one from a closed port, for real; one
    whose text quotes the secret, raised here because no real server echoes it)."""
    from orchestration.dbt_build import render_sources
    from tests.connectors_support import city_yaml

    key_id, secret, token = f"AKID{TAG.upper()}", f"s3key-{secrets.token_hex(8)}", f"s3tok-{secrets.token_hex(8)}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    for name in ("AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_CONDITIONAL_PUT"):
        monkeypatch.delenv(name, raising=False)
    assert lake.storage_options("s3://city/lake/bronze/a/b") == {
        "aws_conditional_put": "etag",
        "AWS_ALLOW_HTTP": "true",
    }
    path = city_yaml(
        tmp_path, {"energy": {"meters": {"kind": "files", "path": "./x/*.csv", "format": "csv", "primary_key": ["m"]}}}
    )
    data = yaml.safe_load(path.read_text())
    data["lake"]["root"], data["catalog"] = "s3://city/lake", "./catalog.duckdb"
    path.write_text(yaml.safe_dump(data))
    sources = yaml.safe_dump(render_sources(load_config(path)))
    assert "s3://city/lake/bronze/energy/meters" in sources and "aws_conditional_put: etag" in sources
    assert not [v for v in (key_id, secret, token) if v in sources]
    with pytest.raises(lake.LakeError) as err:
        lake.open_table("s3://city/lake/bronze/energy/meters")
    text = str(err.value)
    assert "s3://city/lake/bronze/energy/meters (lake.root in city.yaml)" in text and "Connection refused" in text
    assert not [v for v in (key_id, secret, token) if v in text], text
    with pytest.raises(lake.LakeError) as err, lake.remote_errors("s3://city/lake/marts/x", "write to"):
        raise OSError(f"403 Forbidden\n<Error><Code>AccessDenied</Code><Message>key {secret}</Message></Error>")
    assert secret not in str(err.value) and "403 Forbidden: AccessDenied" in str(err.value), err.value
