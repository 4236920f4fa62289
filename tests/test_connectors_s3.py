"""File drops on S3 against a real S3-compatible server (moto) on loopback: a `files` source reading an
`s3://bucket/prefix/*.csv` glob loads each object once, picks up new objects and replaces the rows of a
changed one; and bronze written to an `s3://` lake root lands as a Delta table on the server."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
import yaml

from orchestration import lake
from orchestration.config import load_config
from orchestration.connectors.files import file_stamps, glob_files
from tests.connectors_support import bronze_rows, city_yaml, one_source, run, version

try:
    import boto3
    from moto.server import ThreadedMotoServer
except ImportError as exc:  # pragma: no cover - depends on the dev extras
    pytest.skip(f"moto[server] is not installed ({exc}); pip install 'moto[server]>=5.1'", allow_module_level=True)

SPEC = {"kind": "files", "format": "csv", "primary_key": ["meter", "month"]}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 and the AWS_* environment pointing at it (restored after)."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            mp.setenv(name, value)
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
            mp.delenv(name, raising=False)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture
def bucket(s3_endpoint):
    """A fresh bucket on the server, and a client to put objects into it."""
    name = f"citylake-{uuid.uuid4().hex[:10]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return name, client


def test_s3_glob_loads_each_object_once_new_and_changed_objects(tmp_path, bucket):
    name, client = bucket
    client.put_object(
        Bucket=name, Key="landing/energy/2025-01.csv", Body=b"meter,month,kwh\nm1,2025-01,10\nm2,2025-01,7\n"
    )
    client.put_object(Bucket=name, Key="landing/energy/2025-02.csv", Body=b"meter,month,kwh\nm1,2025-02,12\n")
    # neither matches the glob: another extension, and a deeper folder (`*` does not cross `/`)
    client.put_object(Bucket=name, Key="landing/energy/readme.txt", Body=b"not a drop\n")
    client.put_object(Bucket=name, Key="landing/energy/old/2024-12.csv", Body=b"meter,month,kwh\nm9,2024-12,1\n")
    cfg, src = one_source(tmp_path, "energy", "meters", {**SPEC, "path": f"s3://{name}/landing/energy/*.csv"})
    assert not cfg.is_remote
    # `**` does recurse, as it does locally; the sensor's cheap stamps list the same objects
    assert glob_files(f"s3://{name}/landing/**/*.csv") == [
        f"s3://{name}/landing/energy/2025-01.csv",
        f"s3://{name}/landing/energy/2025-02.csv",
        f"s3://{name}/landing/energy/old/2024-12.csv",
    ]
    assert sorted(file_stamps(src.local_path())) == [
        f"s3://{name}/landing/energy/2025-01.csv",
        f"s3://{name}/landing/energy/2025-02.csv",
    ]

    first = run(cfg, src)
    assert first.rows_written == 3 and first.row_count == 3 and first.quarantined == 0
    assert sorted(first.files_loaded) == [
        f"s3://{name}/landing/energy/2025-01.csv",
        f"s3://{name}/landing/energy/2025-02.csv",
    ]
    rows = bronze_rows(cfg, src)
    assert [(r["meter"], r["month"], r["kwh"]) for r in rows] == [
        ("m1", "2025-01", "10"),
        ("m1", "2025-02", "12"),
        ("m2", "2025-01", "7"),
    ]
    assert rows[0]["_source_file"] == f"s3://{name}/landing/energy/2025-01.csv" and rows[0]["_source_checksum"]

    # nothing new: nothing read, no new Delta version
    v1 = version(cfg, src)
    second = run(cfg, src, "run-2")
    assert second.files_loaded == [] and second.rows_written == 0 and version(cfg, src) == v1

    # a new object is loaded on the next run
    client.put_object(Bucket=name, Key="landing/energy/2025-03.csv", Body=b"meter,month,kwh\nm1,2025-03,13\n")
    third = run(cfg, src, "run-3")
    assert third.files_loaded == [f"s3://{name}/landing/energy/2025-03.csv"]
    assert third.rows_written == 1 and third.row_count == 4

    # a changed object replaces its rows (m2 dropped, m3 added, m1 corrected)
    client.put_object(
        Bucket=name, Key="landing/energy/2025-01.csv", Body=b"meter,month,kwh\nm1,2025-01,11\nm3,2025-01,5\n"
    )
    fourth = run(cfg, src, "run-4")
    assert fourth.files_loaded == [f"s3://{name}/landing/energy/2025-01.csv"] and fourth.row_count == 4
    assert [(r["meter"], r["month"], r["kwh"], r["_batch"]) for r in bronze_rows(cfg, src)] == [
        ("m1", "2025-01", "11", "run-4"),
        ("m1", "2025-02", "12", "run-1"),
        ("m1", "2025-03", "13", "run-3"),
        ("m3", "2025-01", "5", "run-4"),
    ]
    assert run(cfg, src, "run-5").files_loaded == []


def test_bronze_on_an_s3_lake_root(tmp_path, bucket):
    from deltalake import DeltaTable

    name, client = bucket
    client.put_object(
        Bucket=name, Key="landing/energy/2025-01.csv", Body=b"meter,month,kwh\nm1,2025-01,10\nm2,2025-01,7\n"
    )
    client.put_object(Bucket=name, Key="landing/energy/2025-02.csv", Body=b"meter,month,kwh\nm1,2025-02,12\n")
    path = city_yaml(tmp_path, {"energy": {"meters": {**SPEC, "path": f"s3://{name}/landing/energy/*.csv"}}})
    data = yaml.safe_load(path.read_text())
    data["lake"]["root"] = f"s3://{name}/lake"
    data["catalog"] = str(tmp_path / "catalog.duckdb")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_config(path)
    src = cfg.source("energy/meters")
    assert cfg.is_remote and cfg.catalog_path == tmp_path / "catalog.duckdb"

    first = run(cfg, src)
    assert first.rows_written == 3 and first.row_count == 3

    uri = lake.bronze_uri(cfg, "energy", "meters")
    assert uri == f"s3://{name}/lake/bronze/energy/meters"
    table = DeltaTable(uri, storage_options=lake.storage_options(uri))
    rows = sorted((r["meter"], r["month"], r["kwh"]) for r in table.to_pyarrow_table().to_pylist())
    assert rows == [("m1", "2025-01", "10"), ("m1", "2025-02", "12"), ("m2", "2025-01", "7")]
    # the Delta log is an object on the server, and nothing was written to the local folder's lake
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=name, Prefix="lake/bronze/energy/meters/")["Contents"]]
    assert any(k.startswith("lake/bronze/energy/meters/_delta_log/") and k.endswith(".json") for k in keys)
    assert not Path(tmp_path / "lake").exists()

    # a rerun does not duplicate and commits nothing
    v1 = table.version()
    again = run(cfg, src, "run-2")
    assert again.files_loaded == [] and again.rows_written == 0
    table = DeltaTable(uri, storage_options=lake.storage_options(uri))
    assert table.version() == v1 and table.to_pyarrow_table().num_rows == 3
