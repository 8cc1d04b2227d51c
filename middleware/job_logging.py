"""Structured job logs: one event per lifecycle step, JSON or console, through structlog.

Events (logger ``jobkit.jobs``): ``job.enqueued``, ``job.started``, ``job.succeeded``,
``job.failed``, ``job.retry_scheduled``, ``job.skipped``, ``job.dead_lettered``
(``job.rate_limited`` comes from RateLimits). Each carries ``ts`` (UTC ISO-8601),
``level``, ``message_id``, ``actor``, ``queue``, ``priority``, ``attempt``, and as
relevant ``duration_ms``, ``queue_latency_ms``, ``exc_type``, ``exc_message``, plus
``host`` and ``pid``. While a job runs, its ``message_id``, ``actor``, ``queue`` and
``attempt`` are bound in contextvars, so any ``logging`` or structlog call in actor
code carries them.

:func:`configure_logging` routes the standard library's records (Dramatiq's,
pika's, the app's) through the same formatter: ``JOBKIT_LOG_FORMAT=json`` (one
object per line; the default off a terminal) or ``console``.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import contextvars
import logging
import multiprocessing
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from dramatiq import Broker, Message
from dramatiq.broker import MessageProxy
from structlog.typing import EventDict

from jobkit.errors import BrokerConfigError
from jobkit.settings import current

from . import outcomes
from .dead_letters import dead_letter_of
from .deliveries import ATTEMPTS, Attempt, job_fields, unwrap
from .hooks import JobkitMiddleware
from .job_lines import STARTED, SUCCEEDED, JobLines, utc_timestamp
from .job_lines import dumps as _dumps
from .redaction import Redactor, escape_control

FORMAT_ENV = "JOBKIT_LOG_FORMAT"
FORMATS = ("json", "console")
MAX_FIELD = 16_384
HOST = socket.gethostname()

#: Dramatiq's per-attempt failure line: job.failed says the same, with context.
_DRAMATIQ_FAILURE = "Failed to process message %s with unhandled exception."

_configured: str | None = None
_configure_lock = threading.Lock()
#: Job events' own fast path (see configure_logging), or None to go through logging.
_job_events: Any = None


def _dumps_text(value: Any, default: Any = None, **_: Any) -> str:
    return _dumps(value, default).decode()


def _stamp(logger: Any, name: str, event: EventDict) -> EventDict:
    event["ts"] = utc_timestamp()
    return event


#: The attempt this thread is running (its fields: message_id, actor, queue, priority, attempt).
_current_job: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "jobkit_current_job", default=None
)


def _merge_current_job(logger: Any, name: str, event: EventDict) -> EventDict:
    """Adds the running job's fields to any log line written while it runs (actor code's too)."""
    job = _current_job.get()
    if job is not None:
        for key, value in job.fields.items():
            event.setdefault(key, value)
    return event


def current_job() -> dict[str, Any] | None:
    """The fields of the job running in this thread (``None`` outside a job)."""
    job = _current_job.get()
    return job.fields if job is not None else None


def _process_facts(logger: Any, name: str, event: EventDict) -> EventDict:
    event.setdefault("host", HOST)
    event.setdefault("pid", os.getpid())
    return event


def _cap_fields(escape: bool):  # noqa: ANN202
    def cap(logger: Any, name: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if isinstance(value, str):
                if len(value) > MAX_FIELD:
                    value = value[:MAX_FIELD] + "…"
                # JSON escapes control characters itself; console output must not
                # let a value start a new line.
                event[key] = escape_control(value) if escape else value
        return event

    return cap


def _cap_exception(logger: Any, name: str, event: EventDict) -> EventDict:
    exception = event.get("exception")
    if isinstance(exception, str) and len(exception) > MAX_FIELD:
        event["exception"] = exception[:MAX_FIELD] + "…"
    return event


class SafeRecords(logging.Filter):
    """Drops Dramatiq's duplicate failure line; renders messages in records without their args.

    Dramatiq formats a message as ``actor(args, kwargs)``, which would put job
    arguments (and any secret among them) into log lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _DRAMATIQ_FAILURE and record.name.startswith("dramatiq.worker"):
            return False
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(_describe(arg) for arg in record.args)
        return True


def _describe(value: Any) -> Any:
    message_id = getattr(value, "message_id", None)
    actor_name = getattr(value, "actor_name", None)
    if message_id is not None and actor_name is not None:
        return f"{actor_name}(message_id={message_id})"
    return value


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        _merge_current_job,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _stamp,
        _process_facts,
    ]


def _configure_structlog(*, force: bool = False) -> None:
    """Route structlog events into the standard library's logging (once per process).

    Left alone if the app configured structlog itself, unless jobkit is asked
    to own logging (``force``, from :func:`configure_logging`).
    """
    if structlog.is_configured() and not force:
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def resolve_format(fmt: str | None = None) -> str:
    """``fmt``, else ``JOBKIT_LOG_FORMAT``, else console on a terminal and JSON elsewhere."""
    fmt = (fmt or current().log_format).strip().lower()
    if not fmt:
        return "console" if sys.stderr.isatty() else "json"
    if fmt not in FORMATS:
        raise BrokerConfigError(f"{FORMAT_ENV}={fmt!r} is not a log format; use json or console")
    return fmt


def configure_logging(fmt: str | None = None, *, force: bool = False) -> str:
    """Send every log record of this process through jobkit's formatter; returns the format.

    Keeps the handlers already on the root logger (``dramatiq`` points them at
    its pipe to the parent process) and replaces their formatter, or adds one
    for stderr. Idempotent unless ``force``.
    """
    global _configured
    fmt = resolve_format(fmt)
    with _configure_lock:
        if _configured == fmt and not force:
            return fmt
        shared = _shared_processors()
        _configure_structlog(force=True)
        renderer = (
            structlog.processors.JSONRenderer(serializer=_dumps_text)
            if fmt == "json"
            else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        )
        formatter = structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _cap_fields(escape=fmt == "console"),
                renderer,
            ],
        )
        root = logging.getLogger()
        if not root.handlers:
            root.addHandler(logging.StreamHandler(sys.stderr))
        _serialize_pipe_writes(root)
        for handler in root.handlers:
            handler.setFormatter(formatter)
            if not any(isinstance(f, SafeRecords) for f in handler.filters):
                handler.addFilter(SafeRecords())
        level = current().log_level
        if level:
            root.setLevel(level)
        elif root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        logging.getLogger("pika").setLevel(logging.WARNING)
        _set_job_events(root, fmt)
        _configured = fmt
    return fmt


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


def _serialize_pipe_writes(root: logging.Logger) -> None:
    """Under dramatiq: stdout, stderr and the root handler share one lock (SerializedStream)."""
    from dramatiq.compat import StreamablePipe

    for handler in root.handlers:
        stream = getattr(handler, "stream", None)
        if isinstance(stream, StreamablePipe) and handler.lock is not None:
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


_line_buffer: LineBuffer | None = None
_NO_FIELDS: dict[str, Any] = {}
#: A job without arguments: one shared dict, only ever read.
_NO_ARGUMENTS: dict[str, Any] = {}


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
        self._render = structlog.processors.JSONRenderer(_dumps)
        self._chain = structlog.wrap_logger(
            sink,
            processors=[
                structlog.processors.add_log_level,
                _stamp,
                structlog.processors.format_exc_info,
                _cap_exception,
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


def _set_job_events(root: logging.Logger, fmt: str) -> None:
    """Write job events straight onto the root handler's stream, skipping stdlib's machinery.

    The same fields and format as every other line, at a fraction of the cost
    per event (they come two per job). Used when the root logger writes to a
    plain stream (as under dramatiq); otherwise job events go through
    ``logging`` like everything else.
    """
    global _job_events, _line_buffer
    handler = next((h for h in root.handlers if type(h) is logging.StreamHandler), None)
    if handler is None:
        _job_events = None
        return
    buffer = _line_buffer
    if buffer is None or buffer.handler is not handler or buffer.pid != os.getpid():
        if buffer is not None and buffer.pid == os.getpid():
            flush_job_events()
        buffer = _line_buffer = LineBuffer(handler)
    if fmt == "json":
        _job_events = JsonJobEvents(buffer, root.getEffectiveLevel())
        return
    # A terminal reads a few lines a second: the full chain, with control characters escaped.
    _job_events = structlog.wrap_logger(
        structlog.WriteLogger(buffer),  # type: ignore[arg-type]  # file-like, not a TextIO
        processors=[
            structlog.processors.add_log_level,
            _stamp,
            structlog.processors.format_exc_info,
            _cap_fields(escape=True),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(root.getEffectiveLevel()),
        context_class=dict,
        cache_logger_on_first_use=True,
    ).bind(logger="jobkit.jobs", host=HOST, pid=os.getpid())


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 2) if seconds is not None else None


class JobLogging(JobkitMiddleware):
    """Logs each job lifecycle step as one structured event."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        _configure_structlog()
        self.redactor = redactor or Redactor()
        self._stdlib_log = structlog.get_logger("jobkit.jobs")
        self._attempts = ATTEMPTS

    def after_process_boot(self, broker: Broker) -> None:
        # A worker process of the dramatiq CLI (a multiprocessing child): jobkit owns its
        # logs. A Worker run inside some other program leaves that program's logging alone.
        if multiprocessing.parent_process() is not None:
            configure_logging()

    @property
    def log(self) -> Any:
        return _job_events if _job_events is not None else self._stdlib_log

    @property
    def active(self) -> bool:
        """Events are logged once jobkit has configured logging in this process.

        Workers always do (``after_process_boot``); app processes only with
        ``JOBKIT_LOG_FORMAT`` set, so jobkit never reformats an app's logs unasked.
        """
        return _configured is not None

    def _fields_of(
        self, attempt: Attempt | None, message: Message | MessageProxy
    ) -> dict[str, Any]:
        # Retries has already counted this attempt in options["retries"]: the start's fields.
        return attempt.fields if attempt is not None else self._fields(unwrap(message))

    def _fields(self, message: Message | MessageProxy) -> dict[str, Any]:
        options = message.options
        return job_fields(
            (
                message.message_id,
                message.actor_name,
                message.queue_name,
                options.get("priority", "normal"),
                int(options.get("retries", 0)) + 1,
            )
        )

    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        message.options["enqueued_at"] = _now_ms()

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        if not self.active:
            return
        kind = outcomes.enqueue_kind(message, delay)
        if kind == outcomes.RETRY:
            running = self._attempts.get(message)
            assert running is not None  # what makes it a retry
            self.log.warning(
                "job.retry_scheduled",
                **running.fields,
                next_attempt=int(message.options.get("retries", 0)) + 1,
                delay_ms=delay,
            )
        elif kind != outcomes.DEFERRAL:  # RateLimits logs job.rate_limited
            self.log.info("job.enqueued", **self._fields(message), delay_ms=delay)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        attempt = self._attempts.begin(message)
        _current_job.set(attempt)
        inner = attempt.message
        args, kwargs = inner.args, inner.kwargs
        if args or kwargs:
            actor = broker.actors.get(attempt.actor)
            arguments = (
                self.redactor.arguments(actor.fn, tuple(args), dict(kwargs)) if actor else None
            )
        else:
            arguments = _NO_ARGUMENTS if attempt.actor in broker.actors else None
        events = _job_events
        if type(events) is JsonJobEvents:  # straight into the JSON line buffer
            events.job_started(attempt, arguments)
        else:
            self.log.info(
                "job.started",
                **attempt.fields,
                queue_latency_ms=attempt.latency_ms,
                args=arguments,
            )

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        attempt = self._attempts.get(message)
        duration = attempt.finish() if attempt is not None else None
        if exception is None:
            if attempt is not None and type(_job_events) is JsonJobEvents:
                _job_events.job_succeeded(attempt)  # straight into the JSON line buffer
            else:
                fields = self._fields_of(attempt, message)
                self.log.info("job.succeeded", **fields, duration_ms=_ms(duration))
        else:
            if attempt is not None:
                attempt.exception = exception
            self.log.warning(
                "job.failed",
                **self._fields_of(attempt, message),
                duration_ms=_ms(duration),
                exc_type=type(exception).__name__,
                exc_message=self.redactor.value(str(exception)),
                exc_info=exception,
            )
        _current_job.set(None)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        if outcomes.peek(message.message_id) is None:  # else RateLimits said why
            self.log.info("job.skipped", **self._fields(message))
        _current_job.set(None)

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        # JobLogging comes before Metrics in the stack, so its after-hooks run last: it ends
        # the shared attempt.
        attempt = self._attempts.end(message)
        outcomes.pop(attempt.message_id if attempt is not None else message.message_id)

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        flush_job_events()

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        attempt = self._attempts.end(message)
        fields = self._fields_of(attempt, message)
        exception = (attempt and attempt.exception) or getattr(message, "_exception", None)
        reason = dead_letter_of(broker, message)["reason"]
        # Rate limiting is flow control, not an error (also for Sentry's log capture).
        log = self.log.warning if reason == outcomes.RATE_LIMITED else self.log.error
        log(
            "job.dead_lettered",
            **fields,
            reason=reason,
            exc_type=type(exception).__name__ if exception is not None else None,
            exc_message=self.redactor.value(str(exception)) if exception is not None else None,
        )
        outcomes.pop(message.message_id)

    def after_dead_letter(self, broker: Broker, record: dict[str, Any]) -> None:
        # A rejected job was logged by after_nack; bytes that were not a job never met middleware.
        if record["reason"] == "undecodable" and self.active:
            self.log.error(
                "job.dead_lettered",
                message_id=None,
                dead_letter_id=record["id"],
                queue=record["queue"],
                reason=record["reason"],
                exc_type=record["exc_type"],
                exc_message=record["exc_message"],
            )
