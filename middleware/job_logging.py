"""Structured job logs: one event per lifecycle step, JSON or console, through structlog.

Events (logger ``jobkit.jobs``): ``job.enqueued``, ``job.started``, ``job.succeeded``,
``job.failed``, ``job.cancelled``, ``job.retry_scheduled``, ``job.skipped``, ``job.dead_lettered``
(``job.rate_limited`` comes from RateLimits). Each carries ``ts`` (UTC ISO-8601),
``level``, ``message_id``, ``actor``, ``queue``, ``priority``, ``attempt``, and as
relevant ``duration_ms``, ``queue_latency_ms``, ``exc_type``, ``exc_message``, plus
``host`` and ``pid``. While a job runs, its ``message_id``, ``actor``, ``queue`` and
``attempt`` are bound in contextvars, so any ``logging`` or structlog call in actor
code carries them.

:func:`middleware.log_config.configure_logging` routes every other record through
the same format; :mod:`middleware.job_events` writes these events fast.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import structlog
from dramatiq import Broker, Message
from dramatiq.broker import MessageProxy

from . import job_events, log_config, outcomes
from .dead_letters import dead_letter_of
from .deliveries import ATTEMPTS, Attempt, job_fields
from .dramatiq_seam import stuffed_exception, unwrap
from .hooks import JobkitMiddleware
from .job_events import JsonJobEvents, flush_job_events
from .job_records import JobCancelled, cancel_requested
from .log_config import configure_logging, configure_structlog
from .log_processors import CURRENT_JOB
from .redaction import Redactor

#: A job without arguments: one shared dict, only ever read.
_NO_ARGUMENTS: dict[str, Any] = {}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 2) if seconds is not None else None


class JobLogging(JobkitMiddleware):
    """Logs each job lifecycle step as one structured event."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        configure_structlog()
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
        events = job_events.JOB_EVENTS
        return events if events is not None else self._stdlib_log

    @property
    def active(self) -> bool:
        """Events are logged once jobkit has configured logging in this process.

        Workers always do (``after_process_boot``); app processes only with
        ``JOBKIT_LOG_FORMAT`` set, so jobkit never reformats an app's logs unasked.
        """
        return log_config.CONFIGURED is not None

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
        CURRENT_JOB.set(attempt)
        inner = attempt.message
        args, kwargs = inner.args, inner.kwargs
        if args or kwargs:
            actor = broker.actors.get(attempt.actor)
            arguments = (
                self.redactor.arguments(actor.fn, tuple(args), dict(kwargs)) if actor else None
            )
        else:
            arguments = _NO_ARGUMENTS if attempt.actor in broker.actors else None
        events = job_events.JOB_EVENTS
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
        # A cooperative job stops itself and returns: its record says cancelled, so does its log.
        if isinstance(exception, JobCancelled) or cancel_requested():
            self.log.info("job.cancelled", **self._fields_of(attempt, message),
                          duration_ms=_ms(duration))  # fmt: skip
        elif exception is None:
            if attempt is not None and type(job_events.JOB_EVENTS) is JsonJobEvents:
                job_events.JOB_EVENTS.job_succeeded(attempt)  # straight into the JSON line buffer
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
        CURRENT_JOB.set(None)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        if outcomes.peek(message.message_id) is None:  # else RateLimits said why
            self.log.info("job.skipped", **self._fields(message))
        CURRENT_JOB.set(None)

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
        exception = (attempt and attempt.exception) or stuffed_exception(message)
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
