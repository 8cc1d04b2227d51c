"""jobkit owns a process's logs: every record, Dramatiq's and the app's, in one format.

:func:`configure_logging` routes the standard library's records (Dramatiq's,
pika's, the app's) and structlog's through the same processors and renderer:
``JOBKIT_LOG_FORMAT=json`` (one object per line; the default off a terminal) or
``console``. Job events take their own fast path (:mod:`middleware.job_events`).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import structlog

from jobkit.errors import BrokerConfigError
from jobkit.settings import current

from .job_events import set_job_events
from .log_processors import SafeRecords, cap_fields, dumps_text, shared_processors
from .log_streams import serialize_pipe_writes

FORMAT_ENV = "JOBKIT_LOG_FORMAT"
FORMATS = ("json", "console")

#: The format this process's logs were configured with, None until configure_logging.
CONFIGURED: str | None = None
_configure_lock = threading.Lock()


def configure_structlog(*, force: bool = False) -> None:
    """Route structlog events into the standard library's logging (once per process).

    Left alone if the app configured structlog itself, unless jobkit is asked
    to own logging (``force``, from :func:`configure_logging`).
    """
    if structlog.is_configured() and not force:
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared_processors(),
            to_stdlib,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


#: How an event reads where jobkit does not own logging (a plain stdlib handler, or none).
_PLAIN_TEXT = structlog.dev.ConsoleRenderer(
    colors=False, exception_formatter=structlog.dev.plain_traceback
)


def to_stdlib(logger: Any, name: str, event_dict: Any) -> Any:
    """Hand an event to the standard library: to jobkit's formatter once it is installed.

    Until :func:`configure_logging` installs it (an app that runs a Worker itself and
    left ``JOBKIT_LOG_FORMAT`` unset), the event is rendered here as one line of text,
    with its traceback, so the app's own handlers (or Python's last-resort one) print
    that rather than the event's dict.
    """
    if CONFIGURED is not None:
        return structlog.stdlib.ProcessorFormatter.wrap_for_formatter(logger, name, event_dict)
    return _PLAIN_TEXT(logger, name, event_dict)


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
    global CONFIGURED
    fmt = resolve_format(fmt)
    with _configure_lock:
        if fmt == CONFIGURED and not force:
            return fmt
        shared = shared_processors()
        configure_structlog(force=True)
        renderer = (
            structlog.processors.JSONRenderer(serializer=dumps_text)
            if fmt == "json"
            else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        )
        formatter = structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                cap_fields(escape=fmt == "console"),
                renderer,
            ],
        )
        root = logging.getLogger()
        if not root.handlers:
            root.addHandler(logging.StreamHandler(sys.stderr))
        serialize_pipe_writes(root)
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
        set_job_events(root, fmt)
        CONFIGURED = fmt
    return fmt
