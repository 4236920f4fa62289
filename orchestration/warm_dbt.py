"""Warm dbt: the dbt steps of one `citylake run` start from a process that has already imported dbt.

A dbt process spends about 3 s of CPU importing dbt (dbt-core, its adapters, agate, Jinja) before it
reads the project; a run starts two or three of them, and the test suite a few hundred. `citylake run`
starts one server that imports dbt once (while the loads run) and listens on a Unix socket in a private
temporary folder; dagster-dbt starts `citylake-dbt` (this module's `client`) as its dbt executable, and the
client hands its arguments, working folder, environment and standard streams to the server, which forks a
child that runs dbt's own command line exactly as the `dbt` executable would. The child is a new process
of its own (dbt's global state is fresh in it); it reports its process id and then its exit code, and the
client exits with that code, so dagster-dbt sees what it would see from `dbt`: the same JSON log lines on
the same pipe, the same files, the same exit status.

The server also does, once, the work every dbt process would do first and that leaves no state behind:
dbt's classes compile their JSON schemas and their (de)serializers on first use and keep them on the
class. The server builds the schemas at its start and round-trips the project's saved parse
(target/partial_parse.msgpack: read, written back, written as manifest.json), from the project its process
builds (`PROJECT`) at its start, else from the first request's project while that child runs. Each child
then starts with them compiled: about 0.6-0.8 s of CPU less per dbt process. What the server holds is then
frozen out of the garbage collector's sight (gc.freeze), so that a child's collections skip it.

Outside `citylake run` (a run launched by the Dagster UI or daemon, a Celery worker), the first dbt step
of a process starts a server for the rest of that process. Nothing depends on the server being there: with
no server (`CITYLAKE_DBT_WARM` unset, or `0`) or none answering, the client replaces itself with the real
`dbt` executable. SIGINT and SIGTERM sent to the client (dagster-dbt interrupts a cancelled step with
SIGINT) go on to the child; a child whose client is gone (killed) stops. The server ends with the process
that started it (it watches its standard input, a pipe from that process).

Only the standard library is imported here at module level: the client starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ENV = "CITYLAKE_DBT_WARM"  # the server's socket, set by `warm_dbt_server` for the processes it starts
#: the dbt project this process's dbt steps build (set by the definitions): a server started here warms from its
#: saved parse at once (see _warm_manifest), before the first dbt process it forks
PROJECT: Path | None = None
_LENGTH = struct.Struct("!Q")


def real_dbt() -> str:
    """The `dbt` executable of this environment."""
    return str(Path(sys.executable).with_name("dbt"))


def executable() -> str:
    """What dagster-dbt should start: `citylake-dbt` (next to the Python running citylake) when installed,
    else `dbt` itself."""
    client = Path(sys.executable).with_name("citylake-dbt")
    return str(client) if client.exists() else real_dbt()


def _enabled() -> bool:
    """Whether runs use a warm server: `citylake-dbt` is installed and CITYLAKE_DBT_WARM is not `0`."""
    return os.environ.get(ENV) != "0" and Path(executable()).name == "citylake-dbt"


# ---------------------------------------------------------------------------------------------- client


def client() -> None:
    """`citylake-dbt ARGS...`: dbt ARGS run by the warm server when there is one, else by `dbt` itself."""
    args = sys.argv[1:]
    path = os.environ.get(ENV)
    conn = None
    if path:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)
        except OSError:
            conn.close()
            conn = None
    if conn is None:
        _exec_real(args)
    payload = json.dumps({"args": args, "cwd": os.getcwd(), "env": dict(os.environ), "argv0": real_dbt()}).encode()
    try:
        socket.send_fds(conn, [_LENGTH.pack(len(payload))], [0, 1, 2])
        conn.sendall(payload)
        replies = conn.makefile("rb")
        started = replies.readline()
    except OSError:
        started = b""
    if not started:  # the server went away before starting dbt: nothing ran, so run it here
        _exec_real(args)
    child = int(started)

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    ended = replies.readline()
    # no exit code: the child died without reporting one (killed); dbt's own exit code for a crash is 2
    sys.exit(int(ended) if ended.strip() else 2)


def _exec_real(args: list[str]) -> None:
    dbt = real_dbt()
    os.execv(dbt, [dbt, *args])


# ---------------------------------------------------------------------------------------------- server


def serve(path: str, project: str | None = None) -> None:
    """Listen on `path`, import dbt, and fork a dbt child for each client until standard input closes.
    With `project` (a dbt project folder), its saved parse warms the server first (_warm_manifest)."""
    import selectors

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)  # clients wait in the backlog while dbt is imported
    _import_dbt()
    _warm_schemas()
    # until the caches of the project's parsed form are warm (_warm_manifest): from the project named at the
    # start, else from the saved parse of each request's project while its child runs, on the other core
    warm = not (project and _warm_manifest(Path(project) / "target" / PARTIAL_PARSE))
    _freeze()
    # each dbt child is reaped here as it ends, and the finished ones when the server is stopped: a reaped
    # child's CPU time is added to the server's, and the server's to the process that started it, so the
    # run's CPU time (getrusage, wait4: what `make bench` measures) still includes its dbt processes
    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    signal.signal(signal.SIGTERM, lambda *_: (_reap(), os._exit(0)))
    watch = selectors.DefaultSelector()
    watch.register(listener, selectors.EVENT_READ)
    watch.register(sys.stdin.fileno(), selectors.EVENT_READ)
    while True:
        for key, _ in watch.select():
            if key.fileobj != listener:
                if not os.read(sys.stdin.fileno(), 4096):  # the process that started the server ended
                    _reap()
                    return
                continue
            conn, _ = listener.accept()
            try:
                request = _receive(conn)
            except (OSError, ValueError):
                conn.close()
                continue
            if os.fork() == 0:
                listener.close()
                _child(conn, *request)
            conn.close()
            for fd in request[0]:
                os.close(fd)
            if warm and _warm_manifest(_partial_parse_file(request[1])):  # while the child runs, on the other core
                warm = False
                _freeze()


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _import_dbt() -> None:
    """What every dbt build of citylake imports (the rest is imported by the child, as by `dbt`)."""
    import agate  # noqa: F401
    import dbt.adapters.duckdb
    import dbt.cli.main
    import dbt.task.build
    import dbt.task.seed  # noqa: F401
    import duckdb  # noqa: F401

    # and what the daily build's Python model (int_district_coordinates: point in polygon) imports: pandas
    # alone cost each daily dbt process ~1.3 s of importing
    import pandas  # noqa: F401
    import shapely
    import shapely.wkt  # noqa: F401

    import orchestration.district_points  # noqa: F401


def _freeze() -> None:
    """What the server holds (dbt's modules, the compiled caches) moved out of the garbage collector's sight:
    a child's collections do not walk it again (nor touch its pages, which the child shares with the server).
    Garbage is collected first (what a warm-up read and threw away), or it would be kept for good."""
    import gc

    gc.collect()
    gc.freeze()


def _warm_schemas() -> None:
    """Build, once in the server, the JSON schemas dbt validates its project, profile and selector
    files against (dbt builds each on first use and caches it on its class: ~0.5 s of CPU in every dbt
    process). A class-level cache only, computed from the classes alone: no dbt state is set."""
    import importlib

    for module, name in _VALIDATED:
        with contextlib.suppress(Exception):  # (a dbt release without one of them: nothing to warm)
            getattr(importlib.import_module(module), name).json_schema()


#: the classes whose schema every dbt build of citylake validates a file against (dbt 1.11, dbt-duckdb 1.11)
_VALIDATED = (
    ("dbt.contracts.project", "Project"),
    ("dbt.contracts.project", "ProfileConfig"),
    ("dbt.contracts.project", "PackageConfig"),
    ("dbt.contracts.project", "Configuration"),
    ("dbt.contracts.project", "ProjectFlags"),
    ("dbt.contracts.selection", "SelectorFile"),
    ("dbt.adapters.duckdb.credentials", "DuckDBCredentials"),
)


PARTIAL_PARSE = "partial_parse.msgpack"


def _partial_parse_file(request: dict) -> Path:
    """The saved parse the request's dbt process reads: partial_parse.msgpack in its target folder
    (--target-path, else DBT_TARGET_PATH, where dagster-dbt copies the project's before each step, else
    `target`) of its project (--project-dir, else the working folder)."""
    args = request["args"]

    def option(name: str) -> str | None:
        return args[args.index(name) + 1] if name in args[:-1] else None

    project = Path(request["cwd"]) / (option("--project-dir") or ".")
    return project / (option("--target-path") or request["env"].get("DBT_TARGET_PATH") or "target") / PARTIAL_PARSE


def _warm_manifest(saved_parse: Path) -> bool:
    """Round-trip the project's saved parse once in the server, as every dbt build does in its own
    process: read it (dbt's partial parse), write it back (the next partial parse) and write the
    manifest as JSON (manifest.json). dbt's dataclasses compile their (de)serializers on first use and
    keep them on the class (mashumaro's generated code): about 0.6 s of CPU in each dbt process, and
    compiled here once, every later child inherits them. What is read is thrown away: no dbt state is
    set, and the child parses the project as it would have. Whether it was done (there is a saved
    parse, and it could be read: a file still being written is tried again at the next request)."""
    import tempfile

    try:
        from dbt.contracts.graph.manifest import Manifest
        from dbt.parser.manifest import extended_mashumaro_encoder, extended_mashumuro_decoder

        data = saved_parse.read_bytes()
        manifest = Manifest.from_msgpack(data, decoder=extended_mashumuro_decoder)
        manifest.to_msgpack(extended_mashumaro_encoder)
        manifest.fill_tracking_metadata = lambda: None  # (reads dbt's run flags, which the server has none of)
        with tempfile.TemporaryDirectory(prefix="citylake-dbt-warm-") as folder:
            manifest.writable_manifest().write(os.path.join(folder, "manifest.json"))
    except Exception:  # noqa: BLE001 - best effort: a child does this work itself when the server has not
        return False
    return True


def _receive(conn: socket.socket) -> tuple[list[int], dict]:
    header, fds, _, _ = socket.recv_fds(conn, _LENGTH.size, 3)
    if len(header) != _LENGTH.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("not a citylake-dbt request")
    (length,) = _LENGTH.unpack(header)
    data = bytearray()
    while len(data) < length:
        chunk = conn.recv(min(1 << 20, length - len(data)))
        if not chunk:
            raise ValueError("request cut short")
        data += chunk
    return fds, json.loads(data)


def _child(conn: socket.socket, fds: list[int], request: dict) -> None:
    """In the forked child: become the client's dbt process, run dbt's command line, report its exit code."""
    import atexit
    import threading
    import traceback

    for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [request["argv0"], *request["args"]]
    conn.sendall(f"{os.getpid()}\n".encode())

    def client_gone() -> None:  # the client never sends anything: EOF means it ended before dbt did
        with contextlib.suppress(OSError):
            conn.recv(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=client_gone, daemon=True).start()
    code: object = 0
    try:
        from dbt.cli.main import cli

        cli.main(args=request["args"], prog_name="dbt")
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - reported as the dbt executable would, on stderr with exit status 1
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(OSError):
        conn.sendall(f"{code}\n".encode())
    os._exit(code)


class _Server:
    """One warm dbt server, started on first use."""

    def __init__(self) -> None:
        self.process = None
        self.folder: str | None = None
        self.before: str | None = None

    def start(self) -> None:
        import subprocess
        import tempfile

        if self.process is not None:
            return
        self.folder = tempfile.mkdtemp(prefix="citylake-dbt-")
        path = os.path.join(self.folder, "socket")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestration.warm_dbt", path, *([str(PROJECT)] if PROJECT else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.before = os.environ.get(ENV)
        os.environ[ENV] = path
        # the server listens before it imports dbt: wait the few milliseconds until it does, so that the
        # dbt process started next is served (a client finding no socket would run dbt itself)
        end = time.monotonic() + 10
        while not os.path.exists(path) and self.process.poll() is None and time.monotonic() < end:
            time.sleep(0.005)

    def stop(self) -> None:
        import shutil
        import subprocess

        if self.process is None:
            return
        if self.before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self.before
        # the server holds nothing (each dbt process is a child of its own, already finished here): stopped at
        # once, even while it still imports dbt
        self.process.terminate()
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.process = None


_blocks: list[_Server] = []  # the warm_dbt_server blocks open in this process, innermost last


@contextlib.contextmanager
def warm_dbt_server(now: bool = False) -> Iterator[None]:
    """A warm dbt server for the block, started at once when `now` (dbt is surely needed: it imports while
    the run does other things), else by `start()` when the block first needs dbt (a run that finds nothing
    new imports no dbt at all). The dbt processes started after that (by dagster-dbt, through
    `citylake-dbt`) fork from it. CITYLAKE_DBT_WARM=0 turns it off."""
    if not _enabled():
        yield
        return
    server = _Server()
    _blocks.append(server)
    if now:
        server.start()
    try:
        yield
    finally:
        _blocks.remove(server)
        server.stop()


_for_process: list[_Server] = []  # the server `start(anywhere=True)` started outside any block


def start(anywhere: bool = False) -> bool:
    """Start the innermost `warm_dbt_server` block's server unless it runs; whether one runs. Outside a
    block: none, or with `anywhere`, one for the rest of this process (a run launched by the Dagster UI or
    daemon runs its steps in a process of its own, a Celery worker runs many steps), stopped when the process
    exits (or, if it is killed, when the server's standard input closes with it)."""
    if not _enabled():
        return False
    if _blocks:
        _blocks[-1].start()
        return True
    if not anywhere:
        return False
    if not _for_process:
        import atexit

        _for_process.append(_Server())
        atexit.register(_for_process[0].stop)
    _for_process[0].start()
    return True


if __name__ == "__main__":
    serve(*sys.argv[1:3])
