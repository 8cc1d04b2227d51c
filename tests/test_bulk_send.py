"""send_many: bulk enqueue with one confirmed send's guarantee, on every broker."""

from __future__ import annotations

import dramatiq
import pika
import pytest
from dramatiq import Broker
from dramatiq.brokers.redis import RedisBroker

from brokers import BulkSendError, queue_depths, send_many
from middleware.priorities import InvalidPriority
from tests.conftest import RABBITMQ_URL
from tests.support.processes import wait_until, worker

QUEUE = "jobkit-test"


def declare_job(broker: Broker) -> dramatiq.Actor:
    return dramatiq.actor(lambda n: None, actor_name="bulk_job", broker=broker, queue_name=QUEUE)


def depth(broker: Broker) -> object:
    return next(d for d in queue_depths(broker, {QUEUE}) if d.queue == QUEUE)


def test_send_many_enqueues_every_message_with_its_priority(broker: Broker) -> None:
    job = dramatiq.actor(lambda n: None, actor_name="bulk_job", broker=broker, queue_name=QUEUE)
    messages = [job.message(n) for n in range(2500)]
    messages += [job.message_with_options(args=(n,), priority="critical") for n in range(10)]
    sent = send_many(messages, broker=broker, batch_size=1000)
    assert [m.message_id for m in sent] == [m.message_id for m in messages]
    assert sent[-1].options["priority"] == "critical"
    if broker.__class__.__name__ == "StubBroker":
        assert broker.queues[QUEUE].qsize() == 2510
        return
    counts = depth(broker)
    assert counts.ready == 2510
    if counts.levels is not None:
        assert counts.levels["critical"] == 10 and counts.levels["normal"] == 2500


def test_send_many_takes_groups_and_a_delay(real_broker: Broker) -> None:
    job = dramatiq.actor(
        lambda n: None, actor_name="bulk_job", broker=real_broker, queue_name=QUEUE
    )
    group = dramatiq.group([job.message(n) for n in range(3)])
    sent = send_many([group, job.message(3)], broker=real_broker, delay=60_000)
    assert len(sent) == 4 and all(m.queue_name == f"{QUEUE}.DQ" for m in sent)
    assert wait_until(lambda: depth(real_broker).delayed == 4, 10)


def test_an_invalid_message_fails_the_call_before_anything_is_sent(real_broker: Broker) -> None:
    job = dramatiq.actor(
        lambda n: None, actor_name="bulk_job", broker=real_broker, queue_name=QUEUE
    )
    messages = [job.message(n) for n in range(1500)]
    messages.append(job.message_with_options(args=(0,), priority="urgent!"))
    with pytest.raises(InvalidPriority):
        send_many(messages, broker=real_broker, batch_size=500)
    real_broker.declare_queue(QUEUE)
    assert depth(real_broker).ready == 0


def test_sent_messages_run(real_broker: Broker) -> None:
    done: list[int] = []
    job = dramatiq.actor(done.append, actor_name="bulk_job", broker=real_broker, queue_name=QUEUE)
    send_many([job.message(n) for n in range(200)], broker=real_broker)
    with worker(real_broker, threads=4, queues={QUEUE}):
        assert wait_until(lambda: len(done) == 200, 30)
    assert sorted(done) == list(range(200))


def test_what_the_broker_did_not_accept_is_named(real_broker: Broker) -> None:
    job = dramatiq.actor(
        lambda n: None, actor_name="bulk_job", broker=real_broker, queue_name=QUEUE
    )
    other = dramatiq.actor(lambda n: None, actor_name="other_job", broker=real_broker,
                           queue_name="default")  # fmt: skip
    good = [other.message(n) for n in range(5)]
    bad = [job.message(n) for n in range(5)]
    real_broker.declare_queue(QUEUE)
    real_broker.declare_queue("default")
    break_queue(real_broker)
    with pytest.raises(BulkSendError) as caught:
        send_many([*good, *bad], broker=real_broker)
    assert {m.message_id for m in caught.value.not_sent} == {m.message_id for m in bad}
    assert {m.message_id for m in caught.value.sent} == {m.message_id for m in good}
    assert "5 of 10 messages were not confirmed" in str(caught.value)


def break_queue(broker: Broker) -> None:
    """Make the broker refuse messages for QUEUE: a wrong-typed key, or a deleted queue."""
    if isinstance(broker, RedisBroker):
        broker.client.delete(f"{broker.namespace}:{QUEUE}.msgs")
        broker.client.set(f"{broker.namespace}:{QUEUE}.msgs", "not a hash")
        return
    broker.declare_queue(QUEUE, ensure=True)  # so jobkit will not declare it again
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        connection.channel().queue_delete(QUEUE)
    finally:
        connection.close()
