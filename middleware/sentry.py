"""Sentry alerts for jobs that fail for good, with context and without job arguments.

With ``SENTRY_DSN`` set, :func:`init_sentry` starts sentry-sdk with its Dramatiq
integration (traces, scopes) before any broker exists, and :class:`SentryAlerts`
decides what becomes an event:

- a job's final failure (dead-lettered), tagged ``actor``, ``queue``,
  ``message_id``, ``attempt`` and ``reason``;
- with ``JOBKIT_SENTRY_REPORT_RETRIES=1``, also each failure that a retry follows;
- never a rate-limit deferral, a ``Retry``, nor Dramatiq's or jobkit's own
  error log lines (so no duplicates);
- job arguments only with ``JOBKIT_SENTRY_SEND_ARGS=1`` (secrets still redacted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dramatiq import Broker, Message, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.errors import Retry

from jobkit.settings import Settings

from . import outcomes
from .deliveries import CurrentDelivery
from .dramatiq_seam import (
    CONSUMER_THREAD_LOGGER,
    RETRIES_LOGGER,
    WORKER_THREAD_LOGGER,
    stuffed_exception,
    unwrap,
)
from .redaction import Redactor

if TYPE_CHECKING:  # sentry-sdk is imported only once SENTRY_DSN is set
    from sentry_sdk.types import Event, Hint

DSN_ENV = "SENTRY_DSN"
SEND_ARGS_ENV = "JOBKIT_SENTRY_SEND_ARGS"
REPORT_RETRIES_ENV = "JOBKIT_SENTRY_REPORT_RETRIES"
#: Loggers whose ERROR lines would duplicate (or misreport) what SentryAlerts sends.
QUIET_LOGGERS = (
    WORKER_THREAD_LOGGER,
    # One logger per queue, ``...ConsumerThread(<queue>)``: sentry-sdk matches with fnmatch.
    f"{CONSUMER_THREAD_LOGGER}(*)",
    RETRIES_LOGGER,
    "jobkit.jobs",
    "jobkit.rate_limits",
)

_initialised = False
#: JOBKIT_SENTRY_SEND_ARGS, as sentry-sdk was initialised with (read by its before_send).
_send_args = False


def init_sentry(settings: Settings) -> bool:
    """Initialise sentry-sdk if ``SENTRY_DSN`` is set (once per process); True if active."""
    global _initialised, _send_args
    if _initialised:
        return True
    dsn = settings.sentry_dsn
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.dramatiq import DramatiqIntegration
    from sentry_sdk.integrations.logging import ignore_logger

    send_args = _send_args = settings.sentry_send_args
    sentry_sdk.init(
        dsn=dsn,
        integrations=[DramatiqIntegration()],
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="always" if send_args else "never",
        before_send=_before_send,
    )
    for name in QUIET_LOGGERS:
        ignore_logger(name)
    _initialised = True
    return True


def _before_send(event: Event, hint: Hint) -> Event | None:
    exc_info = hint.get("exc_info")
    if exc_info and isinstance(exc_info[1], Retry):
        return None
    values = (event.get("exception") or {}).get("values") or []
    if any((v.get("mechanism") or {}).get("type") == "dramatiq" for v in values):
        return None  # the integration's per-attempt capture: SentryAlerts reports instead
    if not _send_args:
        dramatiq_context = (event.get("contexts") or {}).get("dramatiq")
        if isinstance(dramatiq_context, dict):
            dramatiq_context.pop("data", None)
        (event.get("contexts") or {}).pop("job_arguments", None)
    return event


class SentryAlerts(Middleware):
    """Sends final failures (and optionally retried ones) to Sentry, tagged, args left out."""

    def __init__(
        self,
        redactor: Redactor | None = None,
        *,
        report_retries: bool = False,
        send_args: bool = False,
    ) -> None:
        self.redactor = redactor or Redactor()
        #: Also report each failure a retry follows (``JOBKIT_SENTRY_REPORT_RETRIES``).
        self.report_retries = report_retries
        #: Attach the job's (redacted) arguments (``JOBKIT_SENTRY_SEND_ARGS``).
        self.send_args = send_args
        self._delivery = CurrentDelivery()

    @property
    def enabled(self) -> bool:
        return _initialised

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if self.enabled and exception is not None and not isinstance(exception, Retry):
            attempt = int(message.options.get("retries", 0)) + 1
            self._delivery.start(message, failure=(exception, attempt))

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        if delay is None or outcomes.enqueue_kind(message, delay) != outcomes.RETRY:
            return
        delivery = self._delivery.end(message)
        failure: tuple[BaseException, int] | None = delivery["failure"] if delivery else None
        if failure is not None and self.report_retries:
            self._capture(broker, message, *failure, reason="retry_scheduled")

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        self._delivery.end(unwrap(message))

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        delivery = self._delivery.end(message)
        failure: tuple[BaseException, int] | None = delivery["failure"] if delivery else None
        if not self.enabled or outcomes.peek(message.message_id) == outcomes.RATE_LIMITED:
            return
        if failure is None:
            exception = stuffed_exception(message)
            if exception is None:
                return
            failure = (exception, int(message.options.get("retries", 0)) + 1)
        self._capture(broker, message, *failure, reason="dead_lettered")

    def _capture(
        self,
        broker: Broker,
        message: Message | MessageProxy,
        exception: BaseException,
        attempt: int,
        reason: str,
    ) -> None:
        import sentry_sdk

        with sentry_sdk.new_scope() as scope:
            scope.set_tag("actor", message.actor_name)
            scope.set_tag("queue", message.queue_name)
            scope.set_tag("message_id", message.message_id)
            scope.set_tag("attempt", str(attempt))
            scope.set_tag("outcome", reason)
            if self.send_args:
                actor = broker.actors.get(message.actor_name)
                if actor is not None:
                    scope.set_context(
                        "job_arguments",
                        self.redactor.arguments(
                            actor.fn, tuple(message.args), dict(message.kwargs)
                        ),
                    )
            sentry_sdk.capture_exception(exception)
