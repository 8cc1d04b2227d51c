"""A helper process that renders a worker's job events, off the worker's GIL.

A no-op job on RabbitMQ keeps a worker process's GIL busy; rendering its two
JSON lines there cost about a fifth of what logs and metrics add per job. The
worker's log flush instead sends each batch (lines already rendered, and job
records; see ``job_lines``) to one helper process per worker process, marshalled,
and a relay thread writes the lines the helper sends back, in batch order.

Nothing is lost when the helper dies: a batch stays pending until its lines
are written, and the worker renders whatever is pending itself, then every
later batch. A batch marshal cannot carry is rendered in the worker and sent
through as lines, so batches keep their order.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .job_lines import FRAME_HEADER, JobLines

SCRIPT = Path(__file__).with_name("job_lines.py")

logger = logging.getLogger("jobkit.logs")


class RenderProcess:
    """One helper process and its relay thread; ``write`` receives rendered text, in order."""

    def __init__(self, lines: JobLines, write: Callable[[bytes], None]) -> None:
        self._lines = lines
        self._write = write
        # -P: the script's directory (this package) stays off the helper's sys.path.
        self._process = subprocess.Popen(
            [sys.executable, "-P", str(SCRIPT), lines.static["host"], str(lines.static["pid"])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self.alive = True
        #: Held while a batch is numbered and sent, and while the pending ones are
        #: rendered here after the helper died: batches go out in order.
        self.send_lock = threading.Lock()
        self._pending_lock = threading.Condition()
        #: Batches sent whose lines are not written yet: batch number -> payload.
        self._pending: dict[int, bytes] = {}
        self._sent = 0
        self._closing = False
        self._relay = threading.Thread(
            target=self._relay_lines, name="jobkit-log-relay", daemon=True
        )
        self._relay.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def send(self, batch: list[Any]) -> bool:
        """Hand over one batch (call with ``send_lock`` held); False: render it yourself."""
        if not self.alive:
            return False
        try:
            payload = marshal.dumps(batch)
        except ValueError:  # a value marshal cannot carry: render here, keep the order
            payload = marshal.dumps([self._lines.render_batch(batch)])
        self._sent += 1
        with self._pending_lock:
            self._pending[self._sent] = payload
        try:
            stdin = self._process.stdin
            assert stdin is not None
            stdin.write(FRAME_HEADER.pack(len(payload), self._sent))
            stdin.write(payload)
            stdin.flush()
        except (OSError, ValueError):  # it died: the relay renders what is pending
            pass
        return True

    def wait(self, timeout: float) -> bool:
        """Wait until every batch sent is written; True if it was in time."""
        with self._pending_lock:
            return self._pending_lock.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what was sent, then stop the helper (its lines are rendered here if it hangs)."""
        with self.send_lock:
            self._closing = True
            if not self.wait(timeout):
                self._process.kill()
            with contextlib.suppress(OSError, ValueError):
                self._process.stdin.close()  # type: ignore[union-attr]
        self._relay.join(timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout)

    def _relay_lines(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        while True:
            header = stdout.read(FRAME_HEADER.size)
            if len(header) < FRAME_HEADER.size:
                break
            length, batch_number = FRAME_HEADER.unpack(header)
            text = stdout.read(length)
            if len(text) < length:
                break
            self._write(text)
            with self._pending_lock:
                self._pending.pop(batch_number, None)
                self._pending_lock.notify_all()
        self._helper_gone()

    def _helper_gone(self) -> None:
        """The helper's output ended: render what it did not send back, here, in order."""
        with self.send_lock:
            self.alive = False
            with self._pending_lock:
                pending = [self._pending[number] for number in sorted(self._pending)]
            for payload in pending:
                self._write(self._lines.render_batch(marshal.loads(payload)))
            with self._pending_lock:
                self._pending.clear()
                self._pending_lock.notify_all()
            if not self._closing:
                code = self._process.poll()
                logger.warning(
                    "job events: the log render process (pid %d) ended (exit code %s); "
                    "the worker renders its job events itself from now on (%d batches "
                    "it had not written were rendered here)",
                    self._process.pid,
                    code,
                    len(pending),
                )


def start(lines: JobLines, write: Callable[[bytes], None]) -> RenderProcess | None:
    """A helper for this worker process, or None (with one warning line) if it cannot start."""
    try:
        return RenderProcess(lines, write)
    except OSError as error:
        logger.warning(
            "job events: cannot start the log render process (%s); the worker renders them itself",
            error,
        )
        return None
