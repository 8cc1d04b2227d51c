"""structlog processors and filters shared by every jobkit log line: time, host, the running job.

Each adds or bounds fields; :mod:`middleware.log_config` chains them for the
standard library's records and structlog's, :mod:`middleware.job_events` for job events.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
from typing import Any

import structlog
from structlog.typing import EventDict

from .clipping import clip
from .deliveries import Attempt
from .job_lines import dumps, utc_timestamp
from .redaction import escape_control

MAX_FIELD = 16_384
HOST = socket.gethostname()

#: Dramatiq's per-attempt failure line: job.failed says the same, with context.
_DRAMATIQ_FAILURE = "Failed to process message %s with unhandled exception."


def dumps_text(value: Any, default: Any = None, **_: Any) -> str:
    return dumps(value, default).decode()


def stamp(logger: Any, name: str, event: EventDict) -> EventDict:
    event["ts"] = utc_timestamp()
    return event


#: The attempt this thread is running (its fields: message_id, actor, queue, priority, attempt).
CURRENT_JOB: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "jobkit_current_job", default=None
)


def _merge_current_job(logger: Any, name: str, event: EventDict) -> EventDict:
    """Adds the running job's fields to any log line written while it runs (actor code's too)."""
    job = CURRENT_JOB.get()
    if job is not None:
        for key, value in job.fields.items():
            event.setdefault(key, value)
    return event


def current_job() -> dict[str, Any] | None:
    """The fields of the job running in this thread (``None`` outside a job)."""
    job = CURRENT_JOB.get()
    return job.fields if job is not None else None


def _process_facts(logger: Any, name: str, event: EventDict) -> EventDict:
    event.setdefault("host", HOST)
    event.setdefault("pid", os.getpid())
    return event


def cap_fields(escape: bool):  # noqa: ANN202
    def cap(logger: Any, name: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if isinstance(value, str):
                if len(value) > MAX_FIELD:
                    value = clip(value, MAX_FIELD)
                # JSON escapes control characters itself; console output must not
                # let a value start a new line.
                event[key] = escape_control(value) if escape else value
        return event

    return cap


def cap_exception(logger: Any, name: str, event: EventDict) -> EventDict:
    exception = event.get("exception")
    if isinstance(exception, str) and len(exception) > MAX_FIELD:
        event["exception"] = clip(exception, MAX_FIELD)  # its end says where it failed
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


def shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        _merge_current_job,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        stamp,
        _process_facts,
    ]
