"""What an enqueue is, and why a job is dead-lettered: one answer for every observer."""

from __future__ import annotations

import threading

import dramatiq
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries

from middleware import outcomes
from middleware.deliveries import ATTEMPTS


def _message(**options: object) -> Message:
    return Message("jobkit-test", "job", (), {}, dict(options))


def test_each_kind_of_enqueue_is_told_apart() -> None:
    assert outcomes.enqueue_kind(_message(), None) == outcomes.SENT
    assert outcomes.enqueue_kind(_message(), 500) == outcomes.SENT  # app code with a delay
    assert outcomes.enqueue_kind(_message(eta=1), None) == outcomes.DUE
    assert outcomes.enqueue_kind(_message(replayed_from="dl-1"), None) == outcomes.REPLAY

    deferred = _message()
    outcomes.note(deferred.message_id, outcomes.DEFERRED)
    try:
        assert outcomes.enqueue_kind(deferred, 1000) == outcomes.DEFERRAL
    finally:
        outcomes.pop(deferred.message_id)

    running = _message(retries=1)
    ATTEMPTS.begin(running)
    try:
        assert outcomes.enqueue_kind(running.copy(), 200) == outcomes.RETRY
        # The same message without a delay, while it runs, is no retry (Retries always delays).
        assert outcomes.enqueue_kind(running.copy(), None) == outcomes.SENT
    finally:
        ATTEMPTS.end(running)
    assert outcomes.enqueue_kind(running, 200) == outcomes.SENT  # no longer running here


def test_retries_exhausted_uses_the_limit_retries_applies() -> None:
    """Not Dramatiq's default of 20: the Retries middleware's own, then the actor's."""
    broker = StubBroker(middleware=[Retries(max_retries=2)])
    actor = dramatiq.actor(lambda: None, broker=broker, actor_name="job", queue_name="jobkit-test")
    error = ValueError("boom")
    assert outcomes.dead_letter_reason(broker, _message(retries=3), error) == "retries_exhausted"
    assert outcomes.dead_letter_reason(broker, _message(retries=2), error) == "not_retried"
    actor.options["max_retries"] = 5
    assert outcomes.dead_letter_reason(broker, _message(retries=3), error) == "not_retried"
    assert outcomes.dead_letter_reason(broker, _message(retries=6), error) == "retries_exhausted"
    message = _message(retries=1, max_retries=0)
    assert outcomes.dead_letter_reason(broker, message, error) == "retries_exhausted"


def test_without_retries_in_the_stack_no_limit_is_reached() -> None:
    broker = StubBroker(middleware=[])
    dramatiq.actor(lambda: None, broker=broker, actor_name="job", queue_name="jobkit-test")
    assert outcomes.dead_letter_reason(broker, _message(retries=50), ValueError()) == "not_retried"


def test_a_note_belongs_to_the_delivery_in_the_thread_that_made_it() -> None:
    """Another delivery of the same message (a short deferral come due), in another worker
    thread, neither reads nor pops it: it would record a running job as deferred or skipped."""
    outcomes.note("m-1", outcomes.DEFERRED)
    seen: list[str | None] = []

    def other_delivery() -> None:
        seen.append(outcomes.peek("m-1"))
        seen.append(outcomes.pop("m-1"))

    thread = threading.Thread(target=other_delivery)
    thread.start()
    thread.join()
    assert seen == [None, None]
    assert outcomes.peek("m-2") is None  # this thread's note is on m-1 only
    assert outcomes.pop("m-1") == outcomes.DEFERRED
    assert outcomes.peek("m-1") is None
