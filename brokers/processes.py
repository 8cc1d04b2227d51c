"""Child process groups that must never outlive the jobkit process that started them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

STOP_TIMEOUT_S = 20.0


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
