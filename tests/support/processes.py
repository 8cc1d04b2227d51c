"""Process helpers for tests: in-process workers, CLI runs, and /proc scans."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
from dramatiq import Broker

from brokers.processes import start_process_group, stop_process_group

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until truthy or ``timeout`` seconds pass; return its last truthiness."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


@contextlib.contextmanager
def worker(
    broker: Broker, threads: int = 2, queues: set[str] | None = None
) -> Iterator[dramatiq.Worker]:
    """A Dramatiq worker inside the test process (booted like the CLI boots one)."""
    broker.emit_after("process_boot")
    running = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100, queues=queues)
    running.start()
    try:
        yield running
    finally:
        running.stop(timeout=10_000)


def child_env(broker_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["JOBKIT_BROKER_URL"] = broker_url
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def jobkit_command() -> list[str]:
    script = Path(sys.executable).parent / "jobkit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "jobkit.cli"]


def run_jobkit(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*jobkit_command(), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_dramatiq(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``dramatiq ARGS`` (the stock CLI) in its own process group, output to ``log``."""
    return start_process_group(
        [sys.executable, "-m", "dramatiq", *args], env=env, log=log, cwd=REPO
    )


def stop_group(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """SIGTERM the process group, wait, SIGKILL leftovers; return the leader's exit code."""
    return stop_process_group(process, timeout)


def pids_with_env(needle: str) -> list[int]:
    """Live processes whose environment contains ``needle`` (e.g. a unique broker URL)."""
    found = []
    encoded = needle.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if encoded in (entry / "environ").read_bytes() and not _is_zombie(entry):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def valkey_servers_for(home: Path) -> list[int]:
    """Live valkey-server processes serving the embedded home ``home``.

    Valkey rewrites its process title to ``valkey-server unixsocket:<path>``.
    """
    from brokers.embedded import EmbeddedPaths

    config = f"unixsocket:{EmbeddedPaths(home.resolve()).socket}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"valkey-server" in cmdline and config in cmdline and not _is_zombie(entry):
            found.append(int(entry.name))
    return found


def _is_zombie(entry: Path) -> bool:
    try:
        return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []
