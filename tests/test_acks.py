"""Batched acks: Redis acks in one script call per batch, RabbitMQ acks in one callback."""

from __future__ import annotations

import logging
import threading
from typing import Any

import dramatiq
import pytest
from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from brokers.acks import AckBatcher
from brokers.rabbitmq.amqp_consumer import DeadLetteringConsumer
from tests.support.processes import wait_until, worker

# ---------------------------------------------------------------- the batcher


def test_acks_handed_over_during_a_send_go_out_together_in_the_next_one() -> None:
    sent: list[list[str]] = []
    first_call_started, release = threading.Event(), threading.Event()

    def send(ids: list[str]) -> None:
        sent.append(ids)
        first_call_started.set()
        release.wait(5)

    batcher = AckBatcher(send, name="test-acks")
    batcher.add("a")
    assert first_call_started.wait(5)
    for message_id in ("b", "c", "d"):
        batcher.add(message_id)
    assert batcher.pending == 4  # one being sent, three waiting
    release.set()
    assert batcher.flush(5)
    assert sent == [["a"], ["b", "c", "d"]]
    assert batcher.pending == 0


def test_acks_that_fail_are_kept_and_retried_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("brokers.acks.RETRY_INTERVAL_S", 0.01)
    attempts: list[list[str]] = []

    def send(ids: list[str]) -> None:
        attempts.append(list(ids))
        if len(attempts) <= 3:
            raise ConnectionError("Redis is down")

    caplog.set_level(logging.WARNING, logger="jobkit.brokers.acks")
    batcher = AckBatcher(send, name="test-acks")
    batcher.add("a")
    batcher.add("b")
    assert batcher.flush(5)
    sent_ids = {i for batch in attempts[3:] for i in batch}
    assert sent_ids == {"a", "b"}
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if "could not ack" in w]) == 1
    assert "Redis is down" in warnings[0]
    assert any("going through again" in w for w in warnings)


def test_stop_sends_what_is_pending_then_ends_the_thread() -> None:
    sent: list[str] = []
    batcher = AckBatcher(sent.extend, name="test-acks")
    batcher.add("a")
    assert batcher.stop(5) == 0
    assert sent == ["a"]
    batcher._thread.join(5)
    assert not batcher._thread.is_alive()


def _broker_down(ids: list[str]) -> None:
    raise ConnectionError("down")


def test_stop_drops_and_counts_acks_the_broker_never_took() -> None:
    batcher = AckBatcher(_broker_down, name="test-acks")
    batcher.add("a")
    assert batcher.stop(0.2) == 1
    batcher._thread.join(5)
    assert not batcher._thread.is_alive()


def test_flush_gives_up_after_its_timeout_while_the_broker_is_down() -> None:
    batcher = AckBatcher(_broker_down, name="test-acks")
    batcher.add("a")
    assert not batcher.flush(0.2)
    assert batcher.pending == 1


# ---------------------------------------------------------------- RabbitMQ settlement


class _Channel:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.calls.append(("ack", tag, multiple))

    def basic_nack(self, tag: int, requeue: bool = True) -> None:
        self.calls.append(("nack", tag, False))


class _Connection:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def add_callback_threadsafe(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def run_callbacks(self) -> None:
        while self.callbacks:
            self.callbacks.pop(0)()


class _Delivery:
    def __init__(self, tag: int) -> None:
        self._tag = tag


def _consumer(delivered: range) -> DeadLetteringConsumer:
    consumer = DeadLetteringConsumer.__new__(DeadLetteringConsumer)
    consumer.connection, consumer.channel = _Connection(), _Channel()  # type: ignore[assignment]
    consumer.logger = logging.getLogger("test")
    consumer.known_tags = set(delivered)
    consumer._settle_lock = threading.Lock()
    consumer._to_ack, consumer._acks_scheduled, consumer._nacking = [], False, set()
    return consumer


def test_acks_below_every_unsettled_delivery_go_as_one_multiple_ack() -> None:
    consumer = _consumer(range(1, 9))
    for tag in (3, 1, 2, 5):
        consumer.ack(_Delivery(tag))  # type: ignore[arg-type]
    consumer._settle(4, ack=False)  # a nack in flight: never covered by a multiple ack
    consumer.known_tags.discard(4)
    assert len(consumer.connection.callbacks) == 2  # one for the acks, one for the nack
    consumer.connection.run_callbacks()
    # 1-3 in one frame; 5 alone, since 4 (being nacked) lies below it.
    assert consumer.channel.calls == [("ack", 3, True), ("ack", 5, False), ("nack", 4, False)]
    assert consumer._nacking == set()


def test_an_ack_for_a_tag_from_a_closed_connection_is_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = _consumer(range(1, 3))
    consumer.ack(_Delivery(7))  # type: ignore[arg-type]
    assert consumer.connection.callbacks == []
    assert "not in known tags" in caplog.text


# ---------------------------------------------------------------- on the real brokers


def test_every_finished_job_is_acked_and_nothing_is_left_in_flight(real_broker: Broker) -> None:
    from brokers import queue_depths

    done: list[int] = []

    @dramatiq.actor(queue_name="jobkit-test", broker=real_broker, max_retries=0)
    def job(n: int) -> None:
        done.append(n)
        if n % 7 == 0:
            raise ValueError(f"job {n} fails on purpose")

    for n in range(300):
        job.send(n)

    with worker(real_broker, threads=8):
        assert wait_until(lambda: len(done) >= 300, 60), f"{len(done)} of 300 jobs ran"
        assert wait_until(lambda: _dead(real_broker) == 43, 30), "failures not dead-lettered"
    # After the worker stopped: an ack that had not reached the broker would have put
    # its message back in the queue (RabbitMQ requeues a closed channel's unacked ones).
    depth = {d.queue: d for d in queue_depths(real_broker, {"jobkit-test"})}["jobkit-test"]
    assert (depth.ready, depth.delayed, depth.in_flight or 0) == (0, 0, 0)
    assert sorted(done) == list(range(300))
    if isinstance(real_broker, RabbitmqBroker):
        return
    # Redis: no id left in any worker's unacked set, no payload left behind.
    client = real_broker.client  # type: ignore[attr-defined]
    namespace = real_broker.namespace  # type: ignore[attr-defined]
    assert not [k for k in client.scan_iter(f"{namespace}:__acks__.*") if client.scard(k)]
    assert client.hlen(f"{namespace}:jobkit-test.msgs") == 0


def _dead(broker: Broker) -> int:
    from brokers import queue_depths

    return {d.queue: d for d in queue_depths(broker, {"jobkit-test"})}["jobkit-test"].dead_lettered
