"""A Redis call whose reply never arrives loses no job (Redis and embedded).

When Redis dies (or the link does) between running a script and answering,
its effects stand but the worker never learns them. A fetch moves ids into
the worker's own unacked set, which dead-worker recovery leaves alone while
the worker heartbeats: a lost fetch reply, or a requeue that failed at a
consumer's close, would strand those jobs for as long as the worker lives.
These tests lose replies on purpose, with the heartbeat timeout far away, so
only the consumer's own recovery can bring the jobs back.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Broker
from dramatiq.errors import ConnectionClosed

from brokers.redis_clients import CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S
from tests.support.processes import wait_until, worker

QUEUE = "jobkit-test"


def lose_replies(
    monkeypatch: pytest.MonkeyPatch, broker: Broker, lose: Callable[[list[Any], Any], bool]
) -> list[str]:
    """Run every dispatch call, then raise as a dead link would where ``lose(args, reply)``."""
    script = broker.scripts["dispatch"]  # type: ignore[attr-defined]
    lost: list[str] = []

    def dispatch(*, args: list[Any], keys: list[str], **kwargs: Any) -> Any:
        reply = script(args=args, keys=keys, **kwargs)
        if lose(args, reply):
            lost.append(args[0])
            raise redis.ConnectionError("Connection closed by server (the test lost the reply)")
        return reply

    monkeypatch.setitem(broker.scripts, "dispatch", dispatch)  # type: ignore[attr-defined]
    return lost


def first_fetch_that_takes_messages(queue: str) -> Callable[[list[Any], Any], bool]:
    done = threading.Event()

    def lose(args: list[Any], reply: Any) -> bool:
        if args[0] == "fetch" and args[2] == queue and reply and not done.is_set():
            done.set()
            return True
        return False

    return lose


def unacked(broker: Broker, queue: str) -> int:
    key = f"{broker.namespace}:__acks__.{broker.broker_id}.{queue}"  # type: ignore[attr-defined]
    return int(broker.client.scard(key))  # type: ignore[attr-defined]


def ack_and_close(broker: Broker, consumer: Any, messages: list[Any]) -> None:
    """Settle what a consumer delivered; then nothing is left in flight."""
    for message in messages:
        consumer.ack(message)
    consumer.close()
    assert unacked(broker, QUEUE) == 0


def test_a_fetch_whose_reply_was_lost_is_answered_by_the_retry(
    redis_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    @dramatiq.actor(queue_name=QUEUE, broker=redis_broker)
    def job(n: int) -> None: ...

    sent = [job.send(n).message_id for n in range(3)]
    lost = lose_replies(monkeypatch, redis_broker, first_fetch_that_takes_messages(QUEUE))
    consumer = redis_broker.consume(QUEUE, prefetch=8, timeout=100)
    with pytest.raises(ConnectionClosed):
        next(consumer)
    assert lost == ["fetch"] and unacked(redis_broker, QUEUE) == 3  # taken, never seen
    consumer.close()
    # The next consumer's fetch carries the lost one's token: it gets those three, once.
    consumer = redis_broker.consume(QUEUE, prefetch=8, timeout=100)
    got = [next(consumer) for _ in range(3)]
    assert [m.message_id for m in got] == sent
    assert next(consumer) is None
    ack_and_close(redis_broker, consumer, got)


def test_jobs_of_a_lost_fetch_reply_run_in_the_same_live_worker(
    redis_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []

    @dramatiq.actor(queue_name=QUEUE, broker=redis_broker)
    def job(n: int) -> None:
        ran.append(n)

    lose_replies(monkeypatch, redis_broker, first_fetch_that_takes_messages(QUEUE))
    for n in range(5):
        job.send(n)
    # The heartbeat timeout is a minute: dead-worker recovery cannot be what runs them.
    with worker(redis_broker, threads=2):
        assert wait_until(lambda: len(ran) == 5, 20), ran
    assert sorted(ran) == list(range(5))
    assert unacked(redis_broker, QUEUE) == 0


def test_messages_a_closing_consumer_could_not_requeue_go_to_the_next_consumer(
    redis_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    @dramatiq.actor(queue_name=QUEUE, broker=redis_broker)
    def job(n: int) -> None: ...

    sent = [job.send(n).message_id for n in range(4)]
    consumer = redis_broker.consume(QUEUE, prefetch=4, timeout=100)
    first = next(consumer)  # three more wait in the consumer's cache
    lose_replies(monkeypatch, redis_broker, lambda args, reply: args[0] == "requeue")
    consumer.close()  # Redis "down": the requeue fails
    monkeypatch.undo()
    consumer = redis_broker.consume(QUEUE, prefetch=4, timeout=100)
    rest = [next(consumer) for _ in range(3)]
    assert [first.message_id] + [m.message_id for m in rest] == sent
    ack_and_close(redis_broker, consumer, [first, *rest])


def test_a_delayed_job_held_when_redis_went_away_still_runs(
    redis_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dramatiq's consumer thread drops its in-memory delay queue on a connection error."""
    ran: list[int] = []

    @dramatiq.actor(queue_name=QUEUE, broker=redis_broker)
    def job(n: int) -> None:
        ran.append(n)

    job.send_with_options(args=(1,), delay=1500)
    held = threading.Event()

    def lose(args: list[Any], reply: Any) -> bool:
        # Once the delay queue's consumer holds the message, its next fetch fails.
        if args[0] == "fetch" and args[2] == f"{QUEUE}.DQ":
            if reply:
                held.set()
            elif held.is_set() and not getattr(lose, "done", False):
                lose.done = True  # type: ignore[attr-defined]
                return True
        return False

    lose_replies(monkeypatch, redis_broker, lose)
    with worker(redis_broker, threads=2):
        assert wait_until(lambda: ran == [1], 20), ran
        time.sleep(0.5)
    assert ran == [1]
    assert unacked(redis_broker, f"{QUEUE}.DQ") == 0


def test_every_jobkit_redis_client_has_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    from brokers import build_broker
    from brokers.state import state_client
    from tests.conftest import REDIS_URL

    broker = build_broker(REDIS_URL)
    monkeypatch.setenv("JOBKIT_STATE_URL", REDIS_URL)
    state, _ = state_client(broker)
    try:
        for client in (broker.client, state):  # type: ignore[attr-defined]
            options = client.connection_pool.connection_kwargs
            assert options["socket_timeout"] == SOCKET_TIMEOUT_S
            assert options["socket_connect_timeout"] == CONNECT_TIMEOUT_S
            assert options["health_check_interval"] > 0
    finally:
        broker.close()


def test_a_server_that_stops_answering_fails_the_fetch_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A link that died silently (no RST): the consumer gives up instead of waiting forever."""
    from brokers import build_broker

    monkeypatch.setattr("brokers.redis_clients.SOCKET_TIMEOUT_S", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        broker = build_broker(f"redis://127.0.0.1:{port}/0")
        try:
            consumer = broker.consume(QUEUE, prefetch=1, timeout=100)
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                next(consumer)
            assert time.monotonic() - started < 5
        finally:
            broker.close()
