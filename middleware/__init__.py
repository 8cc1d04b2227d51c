"""jobkit's middleware stack.

:func:`build_stack` returns the middleware every jobkit broker gets, in
order. ``brokers.build_broker`` installs it before any actor is declared,
because Dramatiq validates actor options against the installed middleware at
declaration time.
"""

from __future__ import annotations

from dramatiq import Middleware
from dramatiq.middleware import Retries as DramatiqRetries
from dramatiq.middleware import default_middleware

from brokers.decoding import MessageRules

from .crash_loops import CrashLoops
from .dead_letters import DeadLetters
from .job_logging import JobLogging
from .load_throttle import LoadThrottle
from .message_guard import MessageGuard
from .metrics import Metrics
from .periodic import PeriodicTicks, periodiq_middleware
from .priorities import Priorities, PriorityConfig
from .rate_limits import RateLimits
from .retries import Retries
from .sentry import SentryAlerts


def build_stack(
    priority_config: PriorityConfig | None = None, rules: MessageRules | None = None
) -> list[Middleware]:
    """Fresh middleware instances for one broker, in order.

    ``Priorities`` comes first so every later ``before_enqueue`` sees the
    message's validated level; then Dramatiq's defaults (AgeLimit, TimeLimit,
    ShutdownNotifications, Callbacks, Pipelines, and Retries as ``middleware.retries``
    has it: a retry is never lost to a broker outage); then periodiq's
    middleware and ``PeriodicTicks``, so a stale or duplicate tick is skipped
    before anything else looks at it; ``CrashLoops``, so a job that keeps
    killing its worker is dead-lettered before it starts again; then ``RateLimits``,
    so a job too old for AgeLimit is dead-lettered rather than deferred; then
    ``JobLogging``, so ``job.started`` is logged only for a job that will run
    (and, hooks after running in reverse, ``job.failed`` before Retries
    schedules the next attempt). ``DeadLetters`` describes a rejected job in
    ``before_nack`` for the broker's consumer to store. Then ``LoadThrottle``
    (inactive unless configured), and ``MessageGuard`` last, so it signs and
    measures the message as every other ``before_enqueue`` left it.
    ``SentryAlerts`` sits after Retries for the same reason. With
    ``SENTRY_DSN`` set, sentry-sdk's own Dramatiq middleware goes first (it
    inserts itself when the broker is created).
    """
    return [
        Priorities(priority_config),
        *(
            Retries() if middleware_class is DramatiqRetries else middleware_class()
            for middleware_class in default_middleware
        ),
        periodiq_middleware(),
        PeriodicTicks(),
        CrashLoops(),
        RateLimits(),
        DeadLetters(),
        JobLogging(),
        SentryAlerts(),
        Metrics(),
        LoadThrottle.from_env(),
        MessageGuard(rules),
    ]
