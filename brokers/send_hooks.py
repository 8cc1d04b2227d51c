"""How jobkit's brokers run a send's hooks: a duplicate stops it, a failure is announced.

Dramatiq's ``before_enqueue`` can only let a send go on or fail it; jobkit's
brokers also let it be answered by a job already pending. UniqueJobs
(``middleware/unique_jobs.py``) raises :class:`Duplicate` there, and the broker
returns the pending job's message, puts nothing on the queue and emits no
``after_enqueue`` (no record, no log line of a send). When a send fails after
``before_enqueue`` began, the broker emits ``after_enqueue_failed``
(``middleware/hooks.py``) for each message not enqueued, so what a middleware
took for it (a unique key) is given back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from dramatiq import Broker, Message

from middleware.unique_jobs import Duplicate


def before_enqueue(broker: Broker, message: Message, delay: int | None) -> Message | None:
    """Run ``before_enqueue``: ``None`` to send ``message``, or the pending job it duplicates."""
    try:
        broker.emit_before("enqueue", message, delay)
    except Duplicate as duplicate:
        return duplicate.pending()
    except BaseException:
        broker.emit_after("enqueue_failed", message, delay)
        raise
    return None


def enqueue_failed(broker: Broker, messages: Iterable[Message], delay: int | None) -> None:
    """Announce that ``messages``, through ``before_enqueue``, were not enqueued."""
    for message in messages:
        broker.emit_after("enqueue_failed", message, delay)


@contextlib.contextmanager
def failing_as_one(broker: Broker, message: Message, delay: int | None) -> Iterator[None]:
    """Around one message's publish: any error announces it not enqueued, and goes on."""
    try:
        yield
    except BaseException:
        broker.emit_after("enqueue_failed", message, delay)
        raise
