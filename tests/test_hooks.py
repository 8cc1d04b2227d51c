"""jobkit's own hooks reach every middleware through Dramatiq's emit_after, foreign ones too."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from dramatiq import Broker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Middleware

from middleware.crash_loops import CrashLoops
from middleware.hooks import HOOKS, JobkitMiddleware


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
