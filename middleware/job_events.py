"""Job events written straight into the line buffer, skipping the standard library's machinery.

:func:`set_job_events` (called by ``configure_logging``) points :data:`JOB_EVENTS`
at a :class:`JsonJobEvents` (JSON) or a console chain over the root handler's
stream; JobLogging writes through it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import structlog

from .deliveries import Attempt
from .job_lines import STARTED, SUCCEEDED, dumps
from .log_processors import HOST, cap_exception, cap_fields, stamp
from .log_streams import LineBuffer

#: Job events' own fast path (see set_job_events), or None to go through logging.
JOB_EVENTS: Any = None
_line_buffer: LineBuffer | None = None
_NO_FIELDS: dict[str, Any] = {}


def flush_job_events() -> None:
    if _line_buffer is not None and _line_buffer.pid == os.getpid():
        _line_buffer.flush_now()


class JsonJobEvents:
    """Job events as JSON lines into the line buffer, without a bound logger's per-call chain.

    A bound logger runs each call through its processor chain (level, time,
    exception, render): about 15 µs an event, and a no-op job has two. Job
    events know their fields up front: the job thread hands the line buffer a
    record (``job_lines``) or the fields with the time, and the buffer's flush
    renders them as the chain's ``JSONRenderer`` would (orjson, same options),
    many events in one go. An event with ``exc_info``
    (``job.failed``) takes the full chain, which formats the traceback.
    """

    def __init__(self, sink: LineBuffer, level: int) -> None:
        self._sink = sink
        self._level = level
        self._lines = sink.lines
        self._render_event = self._render_item  # bound once
        self._render = structlog.processors.JSONRenderer(dumps)
        self._chain = structlog.wrap_logger(
            sink,
            processors=[
                structlog.processors.add_log_level,
                stamp,
                structlog.processors.format_exc_info,
                cap_exception,
                self._render,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            context_class=dict,
            cache_logger_on_first_use=True,
        ).bind(**self._lines.static)

    def _emit(self, level: int, name: str, event: str, fields: dict[str, Any]) -> None:
        if level < self._level:
            return
        if "exc_info" in fields:
            getattr(self._chain, name)(event, **fields)
            return
        self._sink.defer(self._render_event, (name, event, fields, _NO_FIELDS, time.time()))

    def job_started(self, attempt: Attempt, args: Any) -> None:
        """An attempt's start at INFO, handed over as a record."""
        if self._level <= logging.INFO:
            self._sink.add([STARTED, attempt.key, attempt.latency_ms, args, attempt.started_at])

    def job_succeeded(self, attempt: Attempt) -> None:
        """An attempt's success at INFO (after ``attempt.finish()``), handed over as a record."""
        if self._level <= logging.INFO:
            duration_s = attempt.finish()  # the value finish() already measured
            finished_at = attempt.started_at + duration_s
            self._sink.add([SUCCEEDED, attempt.key, duration_s, finished_at])

    def _render_item(self, item: tuple[str, str, dict[str, Any], dict[str, Any], float]) -> bytes:
        return self._lines.render_event(*item)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", event, fields)


def set_job_events(root: logging.Logger, fmt: str) -> None:
    """Write job events straight onto the root handler's stream, skipping stdlib's machinery.

    The same fields and format as every other line, at a fraction of the cost
    per event (they come two per job). Used when the root logger writes to a
    plain stream (as under dramatiq); otherwise job events go through
    ``logging`` like everything else.
    """
    global JOB_EVENTS, _line_buffer
    handler = next((h for h in root.handlers if type(h) is logging.StreamHandler), None)
    if handler is None:
        JOB_EVENTS = None
        return
    buffer = _line_buffer
    if buffer is None or buffer.handler is not handler or buffer.pid != os.getpid():
        if buffer is not None and buffer.pid == os.getpid():
            flush_job_events()
        buffer = _line_buffer = LineBuffer(handler)
    if fmt == "json":
        JOB_EVENTS = JsonJobEvents(buffer, root.getEffectiveLevel())
        return
    # A terminal reads a few lines a second: the full chain, with control characters escaped.
    JOB_EVENTS = structlog.wrap_logger(
        structlog.WriteLogger(buffer),  # type: ignore[arg-type]  # file-like, not a TextIO
        processors=[
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            cap_fields(escape=True),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(root.getEffectiveLevel()),
        context_class=dict,
        cache_logger_on_first_use=True,
    ).bind(logger="jobkit.jobs", host=HOST, pid=os.getpid())
