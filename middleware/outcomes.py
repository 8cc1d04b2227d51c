"""Why a delivery ended the way it did, shared between middleware of one worker process.

RateLimits notes ``deferred`` or ``rate_limited`` for a message it skipped;
JobLogging (and dead-letter handling) read the note after the ack or nack.
:func:`enqueue_kind` says what an enqueue is (a send, a retry, a deferral, ...),
so logs, metrics and Sentry count the same events; :func:`dead_letter_reason`
says why a job is dead-lettered, with the retry limit Retries itself applies.
"""

from __future__ import annotations

import time
from threading import get_ident

import dramatiq.middleware
from dramatiq import Broker, Message
from dramatiq.broker import MessageProxy
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import SkipMessage, TimeLimitExceeded

from .deliveries import ATTEMPTS

DEFERRED = "deferred"
RATE_LIMITED = "rate_limited"

#: What an enqueue is (:func:`enqueue_kind`).
SENT, RETRY, DEFERRAL, DUE, REPLAY = "sent", "retry", "deferral", "due", "replay"

# Worker thread id -> (message id, outcome) of the delivery it handles. Per thread, not
# per message id: another delivery of the same message (a short deferral come due) may
# run in another thread meanwhile, and must not read or pop this one's note.
_notes: dict[int, tuple[str, str]] = {}


def note(message_id: str, outcome: str) -> None:
    """Say why this thread's delivery of ``message_id`` ends as it does."""
    _notes[get_ident()] = (message_id, outcome)


def peek(message_id: str) -> str | None:
    """This thread's note on ``message_id``, if any."""
    noted = _notes.get(get_ident())
    return noted[1] if noted is not None and noted[0] == message_id else None


def pop(message_id: str) -> str | None:
    """This thread's note on ``message_id``, forgotten (the delivery has ended)."""
    thread = get_ident()
    noted = _notes.get(thread)
    if noted is None or noted[0] != message_id:  # every ack comes here; most have no note
        return None
    del _notes[thread]
    return noted[1]


def enqueue_kind(message: Message, delay: int | None) -> str:
    """What enqueueing ``message`` (with ``delay``) is, as every observer must count it.

    - ``DEFERRAL``: RateLimits puts the job back for later (it noted that for this delivery);
    - ``RETRY``: Retries re-enqueues, with a delay, the job this worker thread is running;
    - ``DUE``: a delayed message moving to its queue (no delay; it has an ``eta``);
    - ``REPLAY``: a dead letter sent again (``replayed_from``);
    - ``SENT``: anything else (app code, pipelines, callbacks).
    """
    if peek(message.message_id) == DEFERRED:
        return DEFERRAL
    if delay is not None and ATTEMPTS.get(message) is not None:
        return RETRY
    options = message.options
    if delay is None and "eta" in options:
        return DUE
    return REPLAY if "replayed_from" in options else SENT


def max_retries(broker: Broker, message: Message | MessageProxy, actor_options: dict) -> int | None:
    """The retry limit Retries applies: the message's, the actor's, else the middleware's own."""
    default = next(
        (m.max_retries for m in broker.middleware if isinstance(m, dramatiq.middleware.Retries)),
        None,  # no Retries in the stack: nothing is retried, so no limit is ever reached
    )
    return message.options.get("max_retries", actor_options.get("max_retries", default))


def dead_letter_reason(
    broker: Broker, message: Message | MessageProxy, exception: BaseException | None
) -> str:
    """Why a message is being dead-lettered, as far as this delivery shows."""
    noted = peek(message.message_id)
    if noted and noted != DEFERRED:
        return noted
    if isinstance(exception, ActorNotFound):
        return "unknown_actor"
    actor = broker.actors.get(message.actor_name)
    options = actor.options if actor is not None else {}
    if exception is None or isinstance(exception, SkipMessage):
        max_age = message.options.get("max_age", options.get("max_age"))
        if max_age is not None and _age_ms(message) > int(max_age):
            return "age_limit"
        return "skipped"
    throws = message.options.get("throws") or options.get("throws")
    if throws and isinstance(exception, throws):
        return "non_retryable"
    limit = max_retries(broker, message, options)
    # Retries has counted the failed attempt: retries > max_retries once exhausted.
    if limit is not None and int(message.options.get("retries", 0)) > int(limit):
        return "time_limit" if isinstance(exception, TimeLimitExceeded) else "retries_exhausted"
    return "not_retried"


def attempts(
    broker: Broker, message: Message | MessageProxy, exception: BaseException | None
) -> int:
    """How many times the job has run, counting this delivery if it ran."""
    retries = int(message.options.get("retries", 0))
    if exception is None or isinstance(exception, SkipMessage | ActorNotFound):
        return retries  # did not run this time
    actor = broker.actors.get(message.actor_name)
    throws = message.options.get("throws") or (actor.options.get("throws") if actor else None)
    # Retries counts every failed run in options["retries"], except one it does not retry.
    return retries + 1 if throws and isinstance(exception, throws) else retries


def _age_ms(message: Message | MessageProxy) -> int:
    return int(time.time() * 1000) - int(message.message_timestamp)
