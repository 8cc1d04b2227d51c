"""Child process groups that must never outlive the jobkit process that started them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

STOP_TIMEOUT_S = 20.0


def start_process_group(
    command: list[str], *, env: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` as the leader of a new session, stdout and stderr appended to ``log``.

    Its own session: a Ctrl-C in our terminal reaches only us, and we decide
    how its processes stop (see :func:`stop_process_group`).
    """
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM ``process``, wait, then SIGKILL what is left of its group; return its exit code.

    ``process`` must have been started with ``start_new_session=True``. Only
    the leader gets SIGTERM: ``dramatiq`` forwards it to its workers, and a
    worker that received it twice would stop hard instead of gracefully.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    # Also reaps grandchildren left behind when the leader exited first.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


def pid_alive(pid: int | None) -> bool:
    """True if process ``pid`` exists and is not a zombie."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True
