"""Why a delivery ended the way it did, shared between middleware of one worker process.

RateLimits notes ``deferred`` or ``rate_limited`` for a message it skipped;
JobLogging (and dead-letter handling) read the note after the ack or nack.
"""

from __future__ import annotations

import threading
import time

from dramatiq import Broker, Message
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import SkipMessage, TimeLimitExceeded

DEFERRED = "deferred"
RATE_LIMITED = "rate_limited"

_notes: dict[str, str] = {}
_lock = threading.Lock()


def note(message_id: str, outcome: str) -> None:
    with _lock:
        _notes[message_id] = outcome


def peek(message_id: str) -> str | None:
    return _notes.get(message_id)


def pop(message_id: str) -> str | None:
    if message_id not in _notes:  # every ack comes here; most messages have no note
        return None
    with _lock:
        return _notes.pop(message_id, None)


def dead_letter_reason(broker: Broker, message: Message, exception: BaseException | None) -> str:
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
    max_retries = message.options.get("max_retries", options.get("max_retries", 20))
    # Retries has counted the failed attempt: retries > max_retries once exhausted.
    if max_retries is not None and int(message.options.get("retries", 0)) > int(max_retries):
        return "time_limit" if isinstance(exception, TimeLimitExceeded) else "retries_exhausted"
    return "not_retried"


def attempts(broker: Broker, message: Message, exception: BaseException | None) -> int:
    """How many times the job has run, counting this delivery if it ran."""
    retries = int(message.options.get("retries", 0))
    if exception is None or isinstance(exception, SkipMessage | ActorNotFound):
        return retries  # did not run this time
    actor = broker.actors.get(message.actor_name)
    throws = message.options.get("throws") or (actor.options.get("throws") if actor else None)
    # Retries counts every failed run in options["retries"], except one it does not retry.
    return retries + 1 if throws and isinstance(exception, throws) else retries


def _age_ms(message: Message) -> int:
    return int(time.time() * 1000) - int(message.message_timestamp)
