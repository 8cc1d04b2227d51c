"""jobkit's own hooks reach every middleware through Dramatiq's emit_after, foreign ones too."""

from __future__ import annotations

import logging
import threading
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Broker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Middleware

from middleware.crash_loops import CrashLoops
from middleware.hooks import HOOKS, JobkitMiddleware
from tests.support.processes import wait_until, worker


class Recorder(JobkitMiddleware):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def after_state_store(
        self, broker: Broker, client: redis.Redis | None, no_store_reason: str
    ) -> None:
        self.calls.append(("state_store", no_store_reason))

    def after_dead_letter(self, broker: Broker, record: dict[str, Any]) -> None:
        self.calls.append(("dead_letter", record["id"]))


def test_every_hook_is_a_documented_no_op_on_any_middleware() -> None:
    for name in HOOKS:
        assert getattr(JobkitMiddleware, name).__doc__
        assert name in vars(Middleware)  # declared on Dramatiq's base, so emit_after finds it


def test_emit_after_reaches_jobkit_middleware_and_skips_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder, crash_loops = Recorder(), CrashLoops()
    broker = StubBroker(middleware=[AgeLimit(), recorder, crash_loops])
    with caplog.at_level(logging.DEBUG):
        broker.emit_after("state_store", None, "no Redis here")
        broker.emit_after("dead_letter", {"id": "dl-1", "queue": "q"})
    assert recorder.calls == [("state_store", "no Redis here"), ("dead_letter", "dl-1")]
    assert crash_loops.client is None and crash_loops.no_store_reason == "no Redis here"
    # AgeLimit (Dramatiq's) answered with the declared no-op, not an AttributeError.
    assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]


def test_jobkits_consumers_announce_each_message_before_a_worker_thread_takes_it(
    real_broker: Broker,
) -> None:
    """``after_receive`` comes from the consumer's thread, before the job's own hooks."""
    events: list[tuple[str, str, str]] = []

    class Watch(JobkitMiddleware):
        def after_receive(self, broker: Broker, message: MessageProxy) -> None:
            events.append(("received", message.message_id, threading.current_thread().name))

        def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
            events.append(("started", message.message_id, threading.current_thread().name))

    real_broker.add_middleware(Watch())  # before the actor is declared

    @dramatiq.actor(broker=real_broker, queue_name="jobkit-test")
    def noop() -> None:
        pass

    sent = noop.send()
    with worker(real_broker, threads=1, queues={"jobkit-test"}):
        assert wait_until(lambda: len(events) >= 2, 20), events
    (received, message_id, consumer), (started, started_id, worker_thread) = events[:2]
    assert (received, message_id, started, started_id) == (
        "received", sent.message_id, "started", sent.message_id
    )  # fmt: skip
    assert consumer != worker_thread  # the consumer's thread, not the job's
