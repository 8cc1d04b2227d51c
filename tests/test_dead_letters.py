"""Dead letters: kept with their reason on every broker, listed, replayed once, purged."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import Counter
from typing import Any
from unittest.mock import Mock
from uuid import uuid4

import dramatiq
import pika
import pytest
import redis
from dramatiq import Broker, Message
from dramatiq.brokers.redis import RedisBroker

from brokers import queue_depths
from brokers.dead_letter_store import (
    DeadLetterStore,
    Filters,
    dead_letter_store,
    replay_message,
)
from brokers.decoding import UndecodableMessage, decode_message
from jobkit.settings import parse_duration_ms
from middleware.dead_letters import DeadLetters, message_as_sent
from tests.conftest import RABBITMQ_URL, env_for, flush, make_broker, url_for
from tests.support.processes import child_env, run_jobkit, wait_until, worker
from tests.support.sentry_sink import SentrySink

QUEUE = "jobkit-test"

# ---------------------------------------------------------------- pure units


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xfe not json", "not a Dramatiq message"),
        (b"[1, 2, 3]", "a list, not an object"),
        (b'{"hello": "world"}', "field 'queue_name' is NoneType"),
        (None, "no message body"),
    ],
)
def test_bytes_that_are_not_a_message_are_refused_with_a_reason(
    data: bytes | None, why: str
) -> None:
    with pytest.raises(UndecodableMessage, match=why):
        decode_message(data)


def test_a_message_of_the_wrong_shape_is_refused_by_field() -> None:
    fields = Message(QUEUE, "job", (), {}, {}).asdict()
    fields["args"] = "abc"
    with pytest.raises(UndecodableMessage, match="field 'args' is str"):
        decode_message(json.dumps(fields).encode())
    fields["args"], fields["options"] = [], []
    with pytest.raises(UndecodableMessage, match="field 'options' is list"):
        decode_message(json.dumps(fields).encode())


def test_a_well_formed_message_decodes() -> None:
    message = Message(QUEUE, "job", (1, "a"), {"k": 2}, {"priority": "high"})
    assert decode_message(message.encode()) == message


@pytest.mark.parametrize(
    ("text", "ms"), [("30s", 30_000), ("15m", 900_000), ("2h", 7_200_000), ("7d", 604_800_000)]
)
def test_durations_parse(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


def test_since_takes_an_age_or_an_iso_time() -> None:
    import argparse

    from jobkit.arguments import moment_ms

    assert moment_ms("2026-01-02T03:04:05Z") == 1_767_323_045_000
    assert moment_ms("2026-01-02T03:04:05") == 1_767_323_045_000  # UTC unless said
    assert abs(moment_ms("1h") - (time.time() * 1000 - 3_600_000)) < 5_000
    with pytest.raises(argparse.ArgumentTypeError, match="an age .* or an ISO-8601 time"):
        moment_ms("yesterday")


def test_a_replayed_message_is_new_with_no_delivery_state_and_points_back() -> None:
    kept = Message(
        f"{QUEUE}.DQ",
        "job",
        (1,),
        {"to": "a@example.com"},
        {"retries": 3, "eta": 1, "redis_message_id": "x", "traceback": "...", "priority": "high"},
    )
    fields = message_as_sent(kept)
    assert fields["queue_name"] == QUEUE
    assert fields["options"] == {"priority": "high"}
    replayed = replay_message(fields, kept.message_id)
    assert replayed.message_id != kept.message_id
    assert replayed.options == {"priority": "high", "replayed_from": kept.message_id}
    assert (replayed.args, replayed.kwargs) == ((1,), {"to": "a@example.com"})


# ---------------------------------------------------------------- helpers


class Runs:
    """Counts runs per message id; ``fixed`` turns the failing actors into working ones."""

    def __init__(self) -> None:
        self.fixed = False
        self.by_id: Counter[str] = Counter()
        self.replayed_from: Counter[str] = Counter()
        self.lock = threading.Lock()

    def record(self) -> None:
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        with self.lock:
            self.by_id[message.message_id] += 1
            origin = message.options.get("replayed_from")
            if origin:
                self.replayed_from[origin] += 1

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.by_id.values())


def declare_failing(broker: Broker, runs: Runs, **options: Any) -> dramatiq.Actor:
    def always_fails(n: int, password: str = "") -> None:
        runs.record()
        if not runs.fixed:
            raise ValueError(f"cannot handle {n}")

    return dramatiq.actor(
        always_fails,
        broker=broker,
        queue_name=QUEUE,
        **{"max_retries": 2, "min_backoff": 10, "max_backoff": 50, **options},
    )


def with_current_message(broker: Broker) -> None:
    broker.add_middleware(dramatiq.middleware.CurrentMessage())


def cli_env(kind: str) -> dict[str, str]:
    return child_env(url_for(kind), **env_for(kind))


# ---------------------------------------------------------------- on every real broker


def test_a_long_error_keeps_its_start_and_its_end(real_broker: Broker) -> None:
    def parse(n: int) -> None:
        raise ValueError("could not parse row " + "x" * 900_000 + f" at line {n}")

    dramatiq.actor(parse, broker=real_broker, queue_name=QUEUE, max_retries=0).send(3)
    store = dead_letter_store(real_broker)
    with worker(real_broker, queues={QUEUE}):
        assert wait_until(lambda: store.count() == 1, 30)
    (record,) = store.list()
    message, trace = record["exc_message"], record["traceback"]
    assert message.startswith("could not parse row xxx") and message.endswith("xxx at line 3")
    assert re.search(r" … \[[\d,]+ characters cut\] … ", message) and len(message) <= 2000
    assert trace.startswith("Traceback (most recent call last):") and "in parse" in trace
    assert trace.rstrip().endswith("xxx at line 3") and len(trace) <= 8192


def test_a_job_that_keeps_failing_is_one_dead_letter_then_replays_once(
    real_broker: Broker, real_broker_kind: str
) -> None:
    with_current_message(real_broker)
    runs = Runs()
    failing = declare_failing(real_broker, runs)
    other = declare_failing(real_broker, runs, actor_name="also_fails", max_retries=0)
    store = dead_letter_store(real_broker)
    sent = failing.send_with_options(args=(7,), kwargs={"password": "hunter2"})
    [other.send(n) for n in range(3)]
    with worker(real_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: store.count() == 4, 30), store.list()
        time.sleep(0.3)  # nothing more arrives
        assert runs.by_id[sent.message_id] == 3 and store.count() == 4

        listed = run_jobkit("dead-letters", "list", "--actor", "always_fails", "--json",
                            env=cli_env(real_broker_kind))  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        (record,) = json.loads(listed.stdout)
        assert record["id"] == sent.message_id
        assert record["reason"] == "retries_exhausted"
        assert record["attempts"] == 3
        assert record["exc_type"] == "ValueError" and record["exc_message"] == "cannot handle 7"
        assert "in always_fails" in record["traceback"]
        assert record["traceback"].rstrip().endswith("ValueError: cannot handle 7")
        assert record["message"]["args"] == [7] and record["queue"] == QUEUE
        assert record["message"]["kwargs"] == {"password": "hunter2"}  # kept for the replay

        shown = run_jobkit("dead-letters", "show", sent.message_id,
                           env=cli_env(real_broker_kind))  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert "reason: retries_exhausted" in shown.stdout
        assert "kwargs={'password': '[redacted]'}" in shown.stdout
        assert "ValueError: cannot handle 7" in shown.stdout

        runs.fixed = True
        replayed = run_jobkit("dead-letters", "replay", sent.message_id, "--json",
                              env=cli_env(real_broker_kind))  # fmt: skip
        assert replayed.returncode == 0, replayed.stderr
        new_id = json.loads(replayed.stdout)["replayed"][sent.message_id]
        assert wait_until(lambda: runs.by_id[new_id] == 1, 20)
        time.sleep(0.3)
        assert runs.replayed_from[sent.message_id] == 1
        assert store.get(sent.message_id) is None and store.count() == 3

    purged = run_jobkit("dead-letters", "purge", "--all", "--actor", "also_fails", "--yes",
                        env=cli_env(real_broker_kind))  # fmt: skip
    assert purged.returncode == 0, purged.stderr
    assert "purged 3" in purged.stdout
    assert store.count() == 0


def test_garbage_in_a_queue_is_dead_lettered_and_the_worker_goes_on(
    real_broker: Broker, real_broker_kind: str
) -> None:
    with_current_message(real_broker)
    runs = Runs()
    runs.fixed = True
    good = declare_failing(real_broker, runs)
    # Sending declares the queue (RabbitMQ declares lazily), before the raw bytes go in.
    real_broker.enqueue(Message(QUEUE, "no_such_actor", (), {}, {}))
    wrong_shape = json.dumps({**Message(QUEUE, "x", (), {}, {}).asdict(), "args": "abc"})
    garbage = [b"\x00\xffnot json at all", wrong_shape.encode()]
    push_raw(real_broker, garbage)
    sent = [good.send(n) for n in range(5)]
    store = dead_letter_store(real_broker)

    with worker(real_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: runs.total == 5 and store.count() == 3, 30), (
            runs.total,
            store.list(),
        )
    assert set(runs.by_id) == {m.message_id for m in sent}
    reasons = Counter(r["reason"] for r in store.list())
    assert reasons == {"undecodable": 2, "unknown_actor": 1}
    kept = store.list(Filters(reason="undecodable"))
    kept_raw = {
        base64.b64decode(r["raw"]) if r["raw_encoding"] == "base64" else r["raw"].encode()
        for r in kept
    }
    assert kept_raw == set(garbage)  # the bytes exactly as found
    # An undecodable dead letter cannot be replayed; it is said so, not lost.
    report = store.replay(filters=Filters(reason="undecodable"))
    assert len(report.skipped) == 2 and not report.replayed and store.count() == 3


def push_raw(broker: Broker, bodies: list[bytes]) -> None:
    """Write bytes straight into the queue, as a buggy or hostile producer would."""
    if isinstance(broker, RedisBroker):
        client = broker.client
        key = f"{broker.namespace}:{QUEUE}"
        # An id with no body at all (LPUSH of junk), and an id whose body is not a message.
        client.rpush(key, bodies[0])
        for body in bodies[1:]:
            redis_id = str(uuid4())
            client.hset(f"{key}.msgs", redis_id, body)
            client.rpush(key, redis_id)
        return
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        # Confirmed and mandatory: a queue the broker has not declared yet fails loudly.
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", QUEUE, body, mandatory=True)
    finally:
        connection.close()


def test_each_final_failure_has_its_reason(real_broker: Broker) -> None:
    with_current_message(real_broker)
    runs = Runs()

    def refuses() -> None:
        raise KeyError("not retryable")

    def too_slow() -> None:
        time.sleep(2)

    def limited() -> None:
        runs.record()

    dramatiq.actor(refuses, broker=real_broker, queue_name=QUEUE, throws=(KeyError,)).send()
    dramatiq.actor(
        too_slow, broker=real_broker, queue_name=QUEUE, time_limit=100, max_retries=0
    ).send()
    old = dramatiq.actor(lambda: None, actor_name="too_old", broker=real_broker,
                         queue_name=QUEUE, max_age=1)  # fmt: skip
    old.send()
    limited_actor = dramatiq.actor(limited, broker=real_broker, queue_name=QUEUE,
                                   rate_limit="1/m", rate_limit_max_wait=1)  # fmt: skip
    limited_actor.send()
    limited_actor.send()
    time.sleep(0.05)  # too_old is now older than its max_age
    store = dead_letter_store(real_broker)
    with worker(real_broker, threads=4, queues={QUEUE}):
        assert wait_until(lambda: store.count() == 4, 30), store.list()
    by_actor = {r["actor"]: r for r in store.list()}
    assert by_actor["refuses"]["reason"] == "non_retryable"
    assert by_actor["refuses"]["attempts"] == 1
    assert by_actor["too_slow"]["reason"] == "time_limit"
    assert by_actor["too_old"]["reason"] == "age_limit"
    assert by_actor["too_old"]["attempts"] == 0
    assert by_actor["limited"]["reason"] == "rate_limited"
    assert runs.total == 1


def test_a_thousand_failures_give_a_thousand_dead_letters_and_replay_all_runs_each_once(
    real_broker: Broker, real_broker_kind: str
) -> None:
    with_current_message(real_broker)
    runs = Runs()
    failing = declare_failing(real_broker, runs, max_retries=0)
    sent = {failing.send(n).message_id for n in range(1000)}
    store = dead_letter_store(real_broker)
    with worker(real_broker, threads=8, queues={QUEUE}):
        assert wait_until(lambda: store.count() == 1000, 120), store.count()
        assert {r["id"] for r in store.iter()} == sent
        runs.fixed = True
        replayed = run_jobkit("dead-letters", "replay", "--all", "--json",
                              env=cli_env(real_broker_kind))  # fmt: skip
        assert replayed.returncode == 0, replayed.stderr
        report = json.loads(replayed.stdout)
        assert len(report["replayed"]) == 1000 and not report["failed"]
        assert wait_until(lambda: sum(runs.replayed_from.values()) >= 1000, 120)
        time.sleep(0.5)
    assert set(runs.replayed_from) == sent
    assert set(runs.replayed_from.values()) == {1}  # none lost, none twice
    assert store.count() == 0


def test_queues_shows_dead_letters_per_queue(real_broker: Broker, real_broker_kind: str) -> None:
    runs = Runs()
    with_current_message(real_broker)
    failing = declare_failing(real_broker, runs, max_retries=0)
    failing.send(1)
    failing.send(2)
    store = dead_letter_store(real_broker)
    with worker(real_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: store.count() == 2, 30)
    shown = run_jobkit("queues", "--queue", QUEUE, "--json", env=cli_env(real_broker_kind))
    assert shown.returncode == 0, shown.stderr
    depth = next(q for q in json.loads(shown.stdout)["queues"] if q["queue"] == QUEUE)
    assert depth["dead_lettered"] == 2


# ---------------------------------------------------------------- store, hooks, fallback


def test_retention_and_the_size_cap_drop_the_oldest(redis_broker_kind: str) -> None:
    from tests.conftest import make_broker

    broker = make_broker(redis_broker_kind)
    client = broker.client
    client.flushdb()
    store = DeadLetterStore(client, ttl_ms=60_000, max_entries=3)
    now = int(time.time() * 1000)

    def record(n: int, age_ms: int) -> dict[str, Any]:
        return {"id": f"dl-{n}", "queue": QUEUE, "reason": "x", "failed_at_ms": now - age_ms}

    store.add(record(0, 120_000))  # older than the TTL: expired by the next add
    store.add(record(1, 3_000))
    assert [r["id"] for r in store.list()] == ["dl-1"]
    for n in range(2, 6):
        store.add(record(n, 1_000 - n))
    assert [r["id"] for r in store.list()] == ["dl-5", "dl-4", "dl-3"]
    assert store.counts_by_queue() == {QUEUE: 3}
    assert store.purge(filters=Filters(before_ms=now - 1_000 + 5)) == 2  # dl-3 and dl-4
    assert [r["id"] for r in store.list()] == ["dl-5"]
    client.flushdb()
    broker.close()


def test_hooks_and_the_webhook_get_each_dead_letter_without_arguments(
    redis_broker_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import make_broker

    seen: list[dict[str, Any]] = []
    with SentrySink() as receiver:
        monkeypatch.setenv(
            "JOBKIT_DEAD_LETTER_WEBHOOK", f"http://127.0.0.1:{receiver.server.server_port}/hook"
        )
        broker = make_broker(redis_broker_kind)
        try:
            broker.client.flushdb()
            hooks = next(m for m in broker.middleware if isinstance(m, DeadLetters))
            hooks.hooks.insert(0, seen.append)
            with_current_message(broker)
            runs = Runs()
            declare_failing(broker, runs, max_retries=0).send(41)
            with worker(broker, threads=1, queues={QUEUE}):
                assert wait_until(lambda: len(seen) == 1, 20)
            hooks.webhook.drain()
            assert wait_until(lambda: len(receiver.bodies) == 1, 10)
            posted = json.loads(receiver.bodies[0])
            assert posted["id"] == seen[0]["id"] and posted["reason"] == "retries_exhausted"
            assert "message" not in posted and "raw" not in posted
            assert seen[0]["message"]["args"] == [41]
        finally:
            broker.client.flushdb()
            broker.close()


def test_rabbitmq_without_a_store_leaves_failures_in_its_xq(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from brokers import build_broker, queue_depths
    from brokers.dead_letter_store import has_store

    monkeypatch.delenv("JOBKIT_STATE_URL", raising=False)
    monkeypatch.delenv("JOBKIT_RATE_LIMIT_URL", raising=False)
    broker = build_broker(RABBITMQ_URL)
    try:
        assert not has_store(broker)
        with_current_message(broker)
        runs = Runs()
        failing = declare_failing(broker, runs, max_retries=0)
        broker.declare_queue(QUEUE)
        broker.flush_all()
        failing.send(1)

        def in_xq() -> bool:
            depth = next(d for d in queue_depths(broker, {QUEUE}) if d.queue == QUEUE)
            return depth.dead_lettered == 1

        with worker(broker, threads=1, queues={QUEUE}):
            assert wait_until(in_xq, 20)
        assert "no dead-letter store" in caplog.text or "no store" in caplog.text
    finally:
        broker.flush_all()
        broker.close()


def test_rabbitmq_settling_a_delivery_it_does_not_know_does_nothing() -> None:
    """A consumer ignores an ack or nack of a tag it did not deliver (as Dramatiq's do).

    Such a message was delivered on a connection since closed: RabbitMQ delivers it
    again, so storing it as dead here would list a job that is about to run again.
    """
    broker = make_broker("rabbitmq")
    flush(broker)
    delivering = other = None
    try:
        declare_failing(broker, Runs(), max_retries=0).send(1)
        store = dead_letter_store(broker)
        delivering = broker.consume(QUEUE, prefetch=1, timeout=100)
        message = None
        deadline = time.monotonic() + 10
        while message is None and time.monotonic() < deadline:
            message = next(delivering)
        assert message is not None
        message.fail()
        broker.emit_before("nack", message)  # as a worker does: DeadLetters describes it

        other = broker.consume(QUEUE, prefetch=1, timeout=100)  # delivered nothing
        assert other.nack(message) is None
        assert store.count() == 0, store.list()
        assert other.ack(message) is None
        assert other.nack(Mock(_tag=1)) is None  # Dramatiq's own check
        assert other.ack(Mock(_tag=1)) is None
        other.close()  # runs whatever it scheduled
        other = None
        assert store.count() == 0

        # The consumer that delivered it still settles it: kept once, gone from the queue.
        delivering.nack(message)
        delivering.close()
        delivering = None
        record = store.get(message.message_id)
        assert record is not None and store.count() == 1
        depth = next(d for d in queue_depths(broker, {QUEUE}) if d.queue == QUEUE)
        assert (depth.ready, depth.dead_lettered) == (0, 1)
    finally:
        for consumer in (other, delivering):
            if consumer is not None:
                consumer.close()
        flush(broker)
        broker.close()


def test_redis_a_nack_of_a_job_this_worker_no_longer_holds_stores_nothing(
    redis_broker: Broker,
) -> None:
    """A stalled worker's job went back to the queue; its late failure is not a dead letter."""
    declare_failing(redis_broker, Runs(), max_retries=0).send(1)
    consumer = redis_broker.consume(QUEUE, prefetch=1, timeout=100)
    try:
        message = None
        deadline = time.monotonic() + 10
        while message is None and time.monotonic() < deadline:
            message = next(consumer)
        assert message is not None
        message.fail()
        redis_broker.emit_before("nack", message)
        # What dead-worker recovery does to a worker silent past the heartbeat timeout.
        redis_broker.requeue_ids(QUEUE, [(message.options["redis_message_id"], None)])
        consumer.nack(message)
        store = dead_letter_store(redis_broker)
        assert store.count() == 0, store.list()
        depth = next(d for d in queue_depths(redis_broker, {QUEUE}) if d.queue == QUEUE)
        assert (depth.ready, depth.in_flight) == (1, 0)  # it runs again, once
    finally:
        consumer.close()


def test_redis_a_nack_redis_did_not_answer_is_retried_until_the_job_is_kept(
    redis_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Dramatiq's consumers do: a nack that meets a connection error runs again."""
    monkeypatch.setattr("dramatiq.worker.POST_PROCESS_MESSAGE_RETRY_DELAY_SECS", 0.1)
    client = redis_broker.client  # type: ignore[attr-defined]
    real_sismember, calls = client.sismember, []

    def sismember(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise redis.ConnectionError("Connection closed by server (the test's outage)")
        return real_sismember(*args)

    monkeypatch.setattr(client, "sismember", sismember)

    @dramatiq.actor(broker=redis_broker, queue_name=QUEUE, max_retries=0)
    def fails() -> None:
        raise ValueError("fails")

    message = fails.send()
    store = dead_letter_store(redis_broker)
    with worker(redis_broker):
        assert wait_until(lambda: store.count() == 1, 10)
        time.sleep(0.3)
    assert len(calls) == 2  # the failed nack, then its retry
    assert store.get(message.message_id) is not None
    depth = next(d for d in queue_depths(redis_broker, {QUEUE}) if d.queue == QUEUE)
    assert (depth.ready, depth.in_flight, depth.dead_lettered) == (0, 0, 1)
