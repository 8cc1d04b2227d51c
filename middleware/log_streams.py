"""How log lines reach a worker's pipe: whole lines under one lock, job events in batches.

Under dramatiq a worker's stdout, stderr and log handler are one pipe to the
main process. :class:`SerializedStream` keeps writers from interleaving its
frames; :class:`LineBuffer` gathers lines (and job records, rendered at flush
time) and writes them every 50 ms.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .dramatiq_seam import is_cli_pipe
from .job_lines import JobLines
from .log_processors import HOST


class SerializedStream:
    """A stream whose writes take its handler's lock and arrive as whole lines.

    Under dramatiq a worker's stdout, stderr and log handler are one pipe to the
    main process, which frames every write (a length, then the bytes). Two
    threads writing at once, say the log flush and a thread's traceback or an
    actor's ``print``, can interleave those parts, after which the main process
    waits forever for bytes that never come and the worker blocks on a full
    pipe. Every writer goes through this lock instead.

    ``print`` writes its text and its newline in two calls; a job event written
    between them would share the printed line and no longer parse as JSON. So a
    thread's text after its last newline waits until that thread writes the
    newline or flushes, as on a line-buffered terminal (up to ``HOLD_CHARS``).
    """

    #: Characters a thread's unfinished line may hold before it is written anyway.
    HOLD_CHARS = 1 << 16

    def __init__(self, stream: Any, lock: Any) -> None:
        self.stream = stream
        self.lock = lock
        # Keyed by thread: only that thread reads or replaces its own entry.
        self._unfinished: dict[int, str] = {}
        atexit.register(self.flush_all)

    def write(self, text: str) -> int:
        thread = threading.get_ident()
        held = self._unfinished.pop(thread, None)
        whole = held + text if held else text
        end = whole.rfind("\n") + 1
        if end < len(whole) and len(whole) - end < self.HOLD_CHARS:
            self._unfinished[thread] = whole[end:]
            whole = whole[:end]
        if whole:
            with self.lock:
                self.stream.write(whole)
        return len(text)

    def flush(self) -> None:
        held = self._unfinished.pop(threading.get_ident(), None)
        with self.lock:
            if held:
                self.stream.write(held)
            self.stream.flush()

    def flush_all(self) -> None:
        """Every thread's unfinished line, at exit."""
        with self.lock, contextlib.suppress(OSError, ValueError):
            for thread in list(self._unfinished):
                held = self._unfinished.pop(thread, None)
                if held:
                    self.stream.write(held)
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def serialize_pipe_writes(root: logging.Logger) -> None:
    """Under dramatiq: stdout, stderr and the root handler share one lock (SerializedStream)."""
    for handler in root.handlers:
        stream = getattr(handler, "stream", None)
        if is_cli_pipe(stream) and handler.lock is not None:
            locked = SerializedStream(stream, handler.lock)
            handler.stream = locked  # type: ignore[attr-defined]  # it has one (getattr above)
            for name in ("stdout", "stderr"):
                if getattr(sys, name) is stream:
                    setattr(sys, name, locked)


class LineBuffer:
    """Gathers whole lines and writes them to ``stream`` in one call every ``interval`` s.

    Under dramatiq every write is a message through a pipe to the main process,
    which relays it: one write per 50 ms instead of two per job is what keeps
    per-job events cheap. Job events wait here as records (lists, see
    ``job_lines``) and are rendered at flush time, by the flush thread, so a
    job thread only hands over its values; other events may wait as
    ``(render, item)`` (``defer``). Flushed when ``max_lines`` wait, on worker
    shutdown and at exit; a SIGKILL loses at most one interval of job events.
    """

    def __init__(
        self, handler: logging.StreamHandler, interval: float = 0.05, max_lines: int = 1024
    ) -> None:
        # Writes share the handler's lock: under dramatiq the stream is a pipe
        # connection, and two threads sending at once would corrupt its framing.
        self.handler = handler
        self.stream = handler.stream
        self.interval = interval
        self.max_lines = max_lines
        self.pid = os.getpid()  # its flush thread does not survive a fork
        #: Renders this process's job records.
        self.lines = JobLines(HOST, self.pid)
        # A deque's append and popleft are atomic: job threads never take a lock here.
        self._lines: collections.deque[Any] = collections.deque()
        self._thread = threading.Thread(
            target=self._flush_often, name="jobkit-log-flush", daemon=True
        )
        self._thread.start()
        atexit.register(self.flush_now)

    def write(self, text: str) -> None:
        # Lines wait as UTF-8; a lone surrogate (undecodable input) is written escaped.
        self.add(text.encode("utf-8", "backslashreplace"))

    def write_json(self, line: bytes) -> None:
        """One rendered JSON object (without its newline)."""
        self.add(line + b"\n")

    def add(self, item: bytes | list[Any] | tuple[Callable[[Any], bytes], Any]) -> None:
        """A rendered line (with its newline), a job record or a deferred render, to write next."""
        self._lines.append(item)
        if len(self._lines) >= self.max_lines:
            self.flush_now()

    def defer(self, render: Callable[[Any], bytes], item: Any) -> None:
        """A line to be made by ``render(item)`` when the buffer is flushed, in its turn."""
        self.add((render, item))

    def msg(self, line: bytes) -> None:
        """structlog's logger interface (as BytesLogger's): one rendered JSON line."""
        self.write_json(line)

    debug = info = warning = error = critical = exception = msg

    def flush(self) -> None:
        """Called by structlog after every line: the timer flushes instead."""

    def flush_now(self) -> None:
        # The handler's lock orders whole chunks between threads and with the
        # handler's own lines.
        with self.handler.lock or _NO_LOCK:
            batch = self._take()
            if batch:
                self._write_text(self.lines.render_batch(batch))

    def _take(self) -> list[Any]:
        """What waits, in order: rendered lines and job records."""
        lines = self._lines
        popleft = lines.popleft
        batch: list[Any] = []
        keep = batch.append
        for _ in range(len(lines)):
            item = popleft()
            keep(item[0](item[1]) if type(item) is tuple else item)
        return batch

    def _write_text(self, data: bytes) -> None:
        """Rendered lines, decoded once, in chunks of whole lines (under the handler's lock)."""
        text = data.decode("utf-8", "replace")
        start, end = 0, len(text)
        while end - start > CHUNK_CHARS:  # whole lines, up to a chunk per write
            cut = text.rfind("\n", start, start + CHUNK_CHARS) + 1
            if cut <= start:  # one line longer than a chunk: it goes whole
                cut = text.find("\n", start + CHUNK_CHARS) + 1 or end
            self._write(text[start:cut])
            start = cut
        if start < end:
            self._write(text[start:])

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a stream closed at exit
            self.stream.write(text)
            self.stream.flush()

    def _flush_often(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush_now()


#: Characters per write: under dramatiq, a pipe message of up to 16 KiB goes in one write.
CHUNK_CHARS = 16_000
_NO_LOCK = contextlib.nullcontext()
