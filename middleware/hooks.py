"""jobkit's own hooks, declared the way Dramatiq declares its own: typed, documented no-ops.

A broker emits them with Dramatiq's ``broker.emit_after(name, ...)``, which calls
``after_<name>`` on every middleware of the stack, Dramatiq's and third parties'
included. So that those have the hooks too, :func:`declare_hooks` puts these
no-ops on ``dramatiq.Middleware`` itself, once, when this module is first
imported (before any broker can emit them); jobkit's middleware derive from
:class:`JobkitMiddleware` and override what they use.
"""

from __future__ import annotations

from typing import Any

import redis
from dramatiq import Broker, Message, Middleware
from dramatiq.broker import MessageProxy


class JobkitMiddleware(Middleware):
    """A middleware that may use jobkit's hooks (below) besides Dramatiq's."""

    def after_state_store(
        self, broker: Broker, client: redis.Redis | None, no_store_reason: str
    ) -> None:
        """Called once the broker knows where jobkit's state lives.

        ``client`` is the Redis holding it (rate limits, crash counts, tick locks,
        dead letters), or ``None`` with ``no_store_reason`` saying why there is none.
        """

    def after_dead_letter(self, broker: Broker, record: dict[str, Any]) -> None:
        """Called once a dead letter's ``record`` is in the store (``middleware.dead_letters``)."""

    def after_enqueue_failed(self, broker: Broker, message: Message, delay: int | None) -> None:
        """Called by jobkit's brokers when ``message`` was not enqueued after ``before_enqueue``
        began for it: a later ``before_enqueue`` refused it, or the broker did (or did not
        confirm it). What a middleware took for the send (a unique job's key) is given back here.
        """

    def after_receive(self, broker: Broker, message: MessageProxy) -> None:
        """Called by jobkit's consumers, in the consumer thread, for each message received
        (it then waits in the worker's queue, or its delay queue if it has an eta, until a
        worker thread takes it). Work started here overlaps the wait (JobRecords' claim).
        """


class UsesStateRedis(JobkitMiddleware):
    """A middleware that keeps its state (locks, counts) in the state Redis, when there is one."""

    #: The state Redis (``after_state_store``), or None: the middleware's feature is off.
    client: redis.Redis | None = None
    #: Why there is no state Redis, for the warning the middleware logs at worker boot.
    no_store_reason = "no Redis is configured for jobkit state"

    def after_state_store(
        self, broker: Broker, client: redis.Redis | None, no_store_reason: str
    ) -> None:
        self.client = client
        if no_store_reason:
            self.no_store_reason = no_store_reason


#: The hooks above, by name; each broker emits them through ``emit_after``.
HOOKS = ("after_state_store", "after_dead_letter", "after_enqueue_failed", "after_receive")


def declare_hooks() -> None:
    """Give every Dramatiq middleware jobkit's hooks as no-ops (idempotent)."""
    for name in HOOKS:
        if name not in vars(Middleware):
            setattr(Middleware, name, vars(JobkitMiddleware)[name])


declare_hooks()
