"""The middleware stack every jobkit broker gets, composed here from ``middleware/``.

:func:`build_broker` installs it before any actor is declared, because
Dramatiq validates actor options against the installed middleware at
declaration time.
"""

from __future__ import annotations

from dramatiq import Middleware
from dramatiq.middleware import Retries as DramatiqRetries
from dramatiq.middleware import default_middleware

from jobkit.settings import Settings, current
from middleware.crash_loops import CrashLoops
from middleware.dead_letters import DeadLetters
from middleware.job_logging import JobLogging
from middleware.job_records import JobRecords
from middleware.load_throttle import LoadThrottle
from middleware.message_guard import MessageGuard, MessageRules
from middleware.metrics import Metrics
from middleware.periodic_ticks import PeriodicTicks, periodiq_middleware
from middleware.priorities import Priorities, PriorityConfig
from middleware.rate_limits import RateLimits
from middleware.redaction import Redactor
from middleware.retries import Retries
from middleware.send_checks import SendChecks
from middleware.sentry import SentryAlerts
from middleware.unique_jobs import UniqueJobs

from .job_record_store import record_store_for
from .liveness import keep_alive
from .metrics_exporter import serve_metrics
from .redis_limit_store import RedisLimitStore


def build_stack(settings: Settings | None = None) -> list[Middleware]:
    """Fresh middleware instances for one broker, in order, configured by ``settings``.

    ``settings`` defaults to this process's (``jobkit.settings.current()``); each
    middleware gets its values through its constructor.

    ``Priorities`` comes first so every later ``before_enqueue`` sees the
    message's validated level; then ``SendChecks``, so a job whose arguments
    cannot be sent fails before anything else spends time on it; then
    Dramatiq's defaults (AgeLimit, TimeLimit, ShutdownNotifications,
    Callbacks, Pipelines, and Retries as ``middleware.retries``
    has it: a retry is never lost to a broker outage); then periodiq's
    middleware and ``PeriodicTicks``, so a stale or duplicate tick is skipped
    before anything else looks at it; ``CrashLoops``, so a job that keeps
    killing its worker is dead-lettered before it starts again; then ``RateLimits``,
    so a job too old for AgeLimit is dead-lettered rather than deferred; then
    ``JobLogging``, so ``job.started`` is logged only for a job that will run
    (and, hooks after running in reverse, ``job.failed`` before Retries
    schedules the next attempt). ``DeadLetters`` describes a rejected job in
    ``before_nack`` for the broker's consumer to store. Then ``LoadThrottle``
    (inactive unless configured); ``UniqueJobs``, after the checks that can refuse a
    send (but MessageGuard's: a refusal then gives its key back) and after RateLimits
    (a deferred job has not started); then ``JobRecords``: its claim is the last
    hook before the job runs, and its ``after_process_message`` the first after
    (a cancel's interrupt cannot land in another middleware); and ``MessageGuard``
    last, so it signs and measures the message as every other ``before_enqueue`` left it.
    ``SentryAlerts`` sits after Retries for the same reason. With
    ``SENTRY_DSN`` set, sentry-sdk's own Dramatiq middleware goes first (it
    inserts itself when the broker is created).
    """
    settings = settings or current()
    redactor = Redactor.from_settings(settings)
    return [
        Priorities(PriorityConfig.from_settings(settings)),
        SendChecks(),
        *(
            Retries() if middleware_class is DramatiqRetries else middleware_class()
            for middleware_class in default_middleware
        ),
        periodiq_middleware(settings.periodic_skip_delay),
        PeriodicTicks(),
        CrashLoops(settings.max_crashes),
        RateLimits(RedisLimitStore, settings.concurrency_lease_ms),
        DeadLetters(
            traceback_chars=settings.dead_letter_traceback,
            hook=settings.dead_letter_hook,
            webhook_url=settings.dead_letter_webhook,
        ),
        JobLogging(redactor),
        SentryAlerts(
            redactor,
            report_retries=settings.sentry_report_retries,
            send_args=settings.sentry_send_args,
        ),
        Metrics(on=settings.metrics, exporter=serve_metrics),
        LoadThrottle.from_settings(settings, keep_alive=keep_alive),
        UniqueJobs(),
        JobRecords(
            record_store_for,
            ttl_ms=settings.job_ttl,
            result_max_bytes=settings.job_result_max_bytes,
            redactor=redactor,
            on=settings.job_records,
        ),
        MessageGuard(MessageRules.from_settings(settings)),
    ]
