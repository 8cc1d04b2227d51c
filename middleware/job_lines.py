"""Job events as JSON lines: compact records in, one line each out.

A worker thread hands ``job.started`` and ``job.succeeded`` to the log buffer
as records (lists, see ``STARTED`` and ``SUCCEEDED``); the buffer's flush turns
them into the same JSON as every other log line with :class:`JobLines`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from .deliveries import job_fields

#: [STARTED, key, queue_latency_ms, args, started_at]
STARTED = 1
#: [SUCCEEDED, key, duration_s, finished_at]
SUCCEEDED = 2
# key: (message_id, actor, queue, priority, attempt), one tuple per attempt.


def dumps(value: Any, default: Any = None, **_: Any) -> bytes:
    """orjson, structlog's recommended fast serializer; non-string keys become strings."""
    return orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS)


_second: tuple[int, str] = (-1, "")


def utc_timestamp(now: float | None = None) -> str:
    """``now`` (default: now) as UTC ISO-8601 with microseconds, as structlog's TimeStamper.

    The date and time of day are formatted once a second: job events come two
    per job, and a datetime per event was a tenth of their cost.
    """
    global _second
    if now is None:
        now = time.time()
    whole = int(now)
    second, text = _second
    if whole != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    # %-formatting: twice as fast as an f-string with int(); %d truncates as int() does.
    return text + ".%06dZ" % ((now - whole) * 1_000_000)  # noqa: UP031


class JobLines:
    """Renders job-event records of one worker process (its ``host`` and ``pid``)."""

    #: What follows a job event's fixed part: its per-attempt values and time.
    _TAILS = {
        "job.started": b'"message_id":%s,"attempt":%d,"queue_latency_ms":%d,"args":%s,'
        b'"ts":"%s.%06dZ"}\n',
        "job.succeeded": b'"message_id":%s,"attempt":%d,"duration_ms":%.2f,"ts":"%s.%06dZ"}\n',
    }

    def __init__(self, host: str, pid: int, logger: str = "jobkit.jobs") -> None:
        self.static = {"logger": logger, "host": host, "pid": pid}
        #: The static fields, rendered once: '{"logger":...,"pid":...,'.
        self._prefix = dumps(self.static)[:-1] + b","
        #: Per (actor, queue, priority): the line templates of job.started and job.succeeded.
        self._started: dict[tuple[Any, ...], bytes] = {}
        self._succeeded: dict[tuple[Any, ...], bytes] = {}
        self._second = -1
        self._second_text = b""

    def render(self, record: Sequence[Any]) -> bytes:
        """One record as one JSON line (with its newline)."""
        if record[0] == STARTED:
            _, key, latency_ms, args, now = record
            try:
                try:
                    args_json = orjson.dumps(args)
                except TypeError:  # a value orjson cannot take, or a non-string key
                    args_json = dumps(args, repr)
                return self._fill(self._started, "job.started", key, now, (latency_ms, args_json))
            except TypeError:  # fields of unusual types: the general renderer
                extra = {"queue_latency_ms": latency_ms, "args": args}
                return self.render_event("info", "job.started", job_fields(key), extra, now)
        _, key, duration_s, now = record
        try:
            return self._fill(self._succeeded, "job.succeeded", key, now, (duration_s * 1000,))
        except TypeError:
            extra = {"duration_ms": round(duration_s * 1000, 2)}
            return self.render_event("info", "job.succeeded", job_fields(key), extra, now)

    def _fill(
        self,
        cache: dict[tuple[Any, ...], bytes],
        event: str,
        key: tuple[Any, ...],
        now: float,
        values: tuple[Any, ...],
    ) -> bytes:
        """``event``'s template for the attempt's actor, queue and priority, filled with
        its message id, attempt number, ``values`` and time (TypeError: fields it cannot
        format)."""
        message_id, actor, queue, priority, attempt = key
        whole = int(now)
        if whole != self._second:
            self._new_second(whole)
        fixed = (actor, queue, priority)
        template = cache.get(fixed) or self._template(cache, event, fixed)
        return template % (
            orjson.dumps(message_id),
            attempt,
            *values,
            self._second_text,
            (now - whole) * 1_000_000,
        )

    def _template(
        self, cache: dict[tuple[Any, ...], bytes], event: str, key: tuple[Any, Any, Any]
    ) -> bytes:
        """The line of ``event`` for one (actor, queue, priority), ready for %-formatting:
        its fixed fields rendered once per such trio, not twice per job."""
        if len(cache) >= 4096:  # actors or priorities made up per message
            cache.clear()
        fixed = {**self.static, "actor": key[0], "queue": key[1], "priority": key[2]}
        fixed.update(event=event, level="info")
        head = dumps(fixed, repr)[:-1].replace(b"%", b"%%")
        template = cache[key] = head + b"," + self._TAILS[event]
        return template

    def _new_second(self, whole: int) -> None:
        self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)).encode()
        self._second = whole

    def render_event(
        self, level: str, event: str, fields: dict[str, Any], extra: dict[str, Any], now: float
    ) -> bytes:
        """Any event without a traceback: its fields and ``extra`` merged, orjson."""
        record = {**fields, **extra, "event": event, "level": level, "ts": utc_timestamp(now)}
        try:
            body = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # a value orjson cannot take, or a non-string key
            body = dumps(record, repr) + b"\n"  # repr: as structlog's fallback
        return self._prefix + body[1:]

    def render_batch(self, batch: list[Any]) -> bytes:
        """Lines already rendered (bytes) and records, in order, as one text."""
        render = self.render
        return b"".join([item if type(item) is bytes else render(item) for item in batch])
