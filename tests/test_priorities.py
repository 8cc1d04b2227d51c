"""Priorities: levels per actor and per message, honoured on every broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from queue import Empty

import dramatiq
import pika
import pytest
from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.worker import _WorkQueueItem

from brokers import BrokerConfigError, build_broker, queue_depths
from brokers.rabbitmq.amqp_broker import QueueNeedsMigration
from brokers.redis.broker import PriorityRedisBroker
from brokers.stack import build_stack
from jobkit.settings import current, load_settings
from middleware.priorities import (
    LEVELS,
    InvalidPriority,
    LevelOrderedWorkQueue,
    PriorityConfig,
    level_of_broker_priority,
    parse_level,
)
from tests.conftest import RABBITMQ_URL, flush, make_broker, url_for
from tests.support.processes import wait_until, worker

# ---------------------------------------------------------------- levels and validation


@pytest.mark.parametrize(
    ("text", "level"), [("critical", "critical"), (" High ", "high"), ("LOW", "low")]
)
def test_level_names_are_case_insensitive(text: str, level: str) -> None:
    assert parse_level(text) == level


@pytest.mark.parametrize("value", ["urgent", "", 0, 3, None, 1.5])
def test_an_invalid_level_is_a_value_error_listing_the_valid_ones(value: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_level(value)
    for level in LEVELS:
        assert level in str(caught.value)


def test_an_invalid_priority_fails_at_send_time(broker: Broker) -> None:
    @dramatiq.actor(queue_name="jobkit-test", broker=broker)
    def job() -> None: ...

    with pytest.raises(
        ValueError, match="invalid priority 'urgent': use one of critical, high, normal, low"
    ):
        job.send_with_options(priority="urgent")
    assert (
        sum(d.ready for d in _depths(broker)) == 0 if not isinstance(broker, StubBroker) else True
    )


def test_an_invalid_actor_priority_fails_at_declaration() -> None:
    broker = StubBroker(middleware=build_stack())
    with pytest.raises(InvalidPriority, match="invalid actor priority 'asap'"):

        @dramatiq.actor(broker=broker, priority="asap")
        def job() -> None: ...


def test_actor_default_and_per_message_override_are_stamped_on_the_message() -> None:
    broker = StubBroker(middleware=build_stack())

    @dramatiq.actor(broker=broker, priority="high")
    def urgent_by_default() -> None: ...

    @dramatiq.actor(broker=broker)
    def plain() -> None: ...

    assert urgent_by_default.send().options["priority"] == "high"
    assert urgent_by_default.send_with_options(priority="low").options["priority"] == "low"
    assert plain.send_with_options(priority="Critical").options["priority"] == "critical"
    assert "priority" not in plain.send().options  # normal costs nothing on the wire


def test_a_broker_priority_is_stamped_as_the_level_with_that_number() -> None:
    broker = StubBroker(middleware=build_stack())

    @dramatiq.actor(broker=broker, priority="high")
    def urgent_by_default() -> None: ...

    @dramatiq.actor(broker=broker)
    def plain() -> None: ...

    assert [level_of_broker_priority(n) for n in (3, 2, 1, 0)] == list(LEVELS)
    assert plain.send_with_options(broker_priority=3).options["priority"] == "critical"
    assert urgent_by_default.send_with_options(broker_priority=1).options["priority"] == "normal"
    assert urgent_by_default.send_with_options(broker_priority=2).options["priority"] == "high"
    assert plain.send_with_options(broker_priority=0, priority="LOW").options["priority"] == "low"
    # The number jobkit's RabbitMQ broker stamps travels with a retry: normal stays left out.
    assert "priority" not in plain.send_with_options(broker_priority=1).options


@pytest.mark.parametrize("value", [4, 9, -1, "3", True, 2.0])
def test_a_broker_priority_that_is_no_level_number_is_refused_naming_the_numbers(
    value: object,
) -> None:
    with pytest.raises(ValueError) as caught:
        level_of_broker_priority(value)
    assert "3 critical, 2 high, 1 normal, 0 low" in str(caught.value)
    assert "x-max-priority=3" in str(caught.value)


def test_priority_mode_and_weights_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBKIT_PRIORITY_MODE", raising=False)
    assert PriorityConfig.from_settings(current()).mode == "strict"
    monkeypatch.setenv("JOBKIT_PRIORITY_MODE", "Weighted")
    monkeypatch.setenv("JOBKIT_PRIORITY_WEIGHTS", "critical=10,low=2")
    config = PriorityConfig.from_settings(current())
    assert config.mode == "weighted"
    assert config.weights == {"critical": 10, "high": 4, "normal": 2, "low": 2}
    assert config.share("low", ("critical", "low")) == pytest.approx(2 / 12)
    monkeypatch.setenv("JOBKIT_PRIORITY_MODE", "fair")
    with pytest.raises(BrokerConfigError, match="use strict .default. or weighted"):
        PriorityConfig.from_settings(current())


@pytest.mark.parametrize("text", ["critical=0", "urgent=3", "critical=x", "critical"])
def test_bad_weights_are_refused(text: str) -> None:
    with pytest.raises(BrokerConfigError, match="JOBKIT_PRIORITY_WEIGHTS"):
        load_settings({"JOBKIT_PRIORITY_WEIGHTS": text})


def test_strict_share_is_all_for_the_most_urgent_busy_level() -> None:
    config = PriorityConfig()
    assert config.share("critical", ("critical", "low")) == 1.0
    assert config.share("low", ("critical", "low")) == 0.0


# ---------------------------------------------------------------- the worker's queue


def _drain(queue: LevelOrderedWorkQueue) -> list[tuple[str | None, int]]:
    out = []
    while True:
        try:
            item = queue.get_nowait()
        except Empty:
            return out
        out.append((item.message.options.get("priority"), item.message.kwargs.get("n")))


def _put(queue: LevelOrderedWorkQueue, actor: str, level: str | None, n: int) -> None:
    options = {"priority": level} if level else {}
    message = dramatiq.Message(
        queue_name="jobkit-test", actor_name=actor, args=(), kwargs={"n": n}, options=options
    )
    queue.put(_WorkQueueItem(0, message))  # type: ignore[arg-type]


def test_worker_queue_runs_fetched_messages_by_level_then_fifo() -> None:
    broker = StubBroker(middleware=build_stack())

    @dramatiq.actor(broker=broker)
    def plain() -> None: ...

    queue = LevelOrderedWorkQueue(broker, strict=True)
    for n, level in enumerate(["low", None, "critical", "low", "high", "critical", None]):
        _put(queue, "plain", level, n)
    assert _drain(queue) == [
        ("critical", 2),
        ("critical", 5),
        ("high", 4),
        (None, 1),
        (None, 6),
        ("low", 0),
        ("low", 3),
    ]


def test_worker_queue_uses_the_actor_default_and_its_int_priority_as_tie_break() -> None:
    broker = StubBroker(middleware=build_stack())

    @dramatiq.actor(broker=broker, priority="high")
    def high_default() -> None: ...

    @dramatiq.actor(broker=broker, priority=-5)
    def normal_but_first() -> None: ...

    @dramatiq.actor(broker=broker)
    def normal() -> None: ...

    queue = LevelOrderedWorkQueue(broker, strict=True)
    _put(queue, "normal", None, 0)
    _put(queue, "normal_but_first", None, 1)
    _put(queue, "high_default", None, 2)
    assert [n for _, n in _drain(queue)] == [2, 1, 0]


def test_weighted_worker_queue_keeps_fetch_order() -> None:
    broker = StubBroker(middleware=build_stack())

    @dramatiq.actor(broker=broker)
    def plain() -> None: ...

    queue = LevelOrderedWorkQueue(broker, strict=False)
    for n, level in enumerate(["low", "critical", "low"]):
        _put(queue, "plain", level, n)
    assert [n for _, n in _drain(queue)] == [0, 1, 2]


def test_the_worker_uses_the_level_ordered_queue(broker: Broker) -> None:
    with worker(broker, threads=1) as running:
        assert isinstance(running.work_queue, LevelOrderedWorkQueue)


# ---------------------------------------------------------------- real brokers


class Recorder:
    """Run order of jobs, shared with the in-process worker threads."""

    def __init__(self) -> None:
        self.order: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def add(self, level: str, n: int) -> None:
        with self.lock:
            self.order.append((level, n))

    def __len__(self) -> int:
        return len(self.order)


def _declare_recorder(broker: Broker, recorder: Recorder, sleep_s: float = 0.001):  # noqa: ANN202
    @dramatiq.actor(queue_name="jobkit-test", broker=broker, max_retries=0)
    def record(level: str, n: int) -> None:
        time.sleep(sleep_s)
        recorder.add(level, n)

    return record


def _depths(broker: Broker) -> list:
    return [d for d in queue_depths(broker, {"jobkit-test"}) if d.queue == "jobkit-test"]


def test_critical_jobs_overtake_a_backlog_of_2000_low_ones(real_broker: Broker) -> None:
    recorder = Recorder()
    record = _declare_recorder(real_broker, recorder)
    for n in range(2000):
        record.send_with_options(args=("low", n), priority="low")

    with worker(real_broker, threads=8):
        assert wait_until(lambda: len(recorder) >= 100, timeout=60)
        for n in range(10):
            # Half of them delayed: a delayed job keeps its level when it comes due.
            delay = 300 if n % 2 else None
            record.send_with_options(args=("critical", n), priority="critical", delay=delay)
        assert wait_until(lambda: len(recorder) >= 2010, timeout=180, interval=0.1)

    lows_before = []
    lows_seen = 0
    for level, _ in recorder.order:
        if level == "low":
            lows_seen += 1
        else:
            lows_before.append(lows_seen)
    assert len(lows_before) == 10
    assert max(lows_before) < 0.95 * 2000, lows_before


def test_levels_run_most_urgent_first_and_fifo_within_a_level(real_broker: Broker) -> None:
    recorder = Recorder()
    record = _declare_recorder(real_broker, recorder, sleep_s=0)
    for n in range(30):
        record.send_with_options(args=("low", n), priority="low")
        record.send_with_options(args=("high", n), priority="high")
        record.send_with_options(args=("normal", n))

    with worker(real_broker, threads=1):
        assert wait_until(lambda: len(recorder) >= 90, timeout=60)

    expected = [(level, n) for level in ("high", "normal", "low") for n in range(30)]
    assert recorder.order == expected


def test_dramatiq_broker_priorities_run_as_the_levels_with_those_numbers(
    system_broker: Broker,
) -> None:
    recorder = Recorder()
    record = _declare_recorder(system_broker, recorder, sleep_s=0)
    for n in range(10):
        for number in range(4):  # increasing, as Dramatiq's own test sends them
            record.send_with_options(args=(f"broker_priority={number}", n), broker_priority=number)
        record.send_with_options(args=("high", n), priority="high")

    with worker(system_broker, threads=1):
        assert wait_until(lambda: len(recorder) >= 50, timeout=60)

    # 2 is high: those jobs and the priority="high" ones are one level, run in send order.
    expected = [("broker_priority=3", n) for n in range(10)]
    expected += [(label, n) for n in range(10) for label in ("broker_priority=2", "high")]
    expected += [(f"broker_priority={number}", n) for number in (1, 0) for n in range(10)]
    assert recorder.order == expected


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"broker_priority": 9}, "invalid broker_priority 9: jobkit has one AMQP priority"),
        ({"broker_priority": 3, "priority": "low"}, "priority='low' and broker_priority=3"),
    ],
)
def test_a_broker_priority_with_no_level_fails_at_send_time_and_nothing_is_enqueued(
    system_broker: Broker, options: dict[str, object], error: str
) -> None:
    record = _declare_recorder(system_broker, Recorder())
    with pytest.raises(InvalidPriority, match=error):
        record.send_with_options(args=("x", 0), **options)
    assert sum(d.ready for d in _depths(system_broker)) == 0


def test_jobkit_queues_reports_depth_per_level(real_broker: Broker) -> None:
    record = _declare_recorder(real_broker, Recorder())
    for level, count in (("critical", 1), ("high", 2), ("normal", 3), ("low", 4)):
        for n in range(count):
            record.send_with_options(args=(level, n), priority=level)
    (depth,) = _depths(real_broker)
    assert depth.ready == 10
    if isinstance(real_broker, RabbitmqBroker):
        assert depth.levels is None  # AMQP reports no per-priority counts
    else:
        assert depth.levels == {"critical": 1, "high": 2, "normal": 3, "low": 4}


def test_requeue_on_shutdown_returns_jobs_to_their_level(real_broker: Broker) -> None:
    recorder = Recorder()
    record = _declare_recorder(real_broker, recorder, sleep_s=0.05)
    for n in range(20):
        record.send_with_options(args=("low", n), priority="low")
        record.send_with_options(args=("critical", n), priority="critical")

    with worker(real_broker, threads=1):
        assert wait_until(lambda: len(recorder) >= 2, timeout=30)
    ran = len(recorder)

    def settled() -> bool:
        (depth,) = _depths(real_broker)
        return depth.ready == 40 - ran and depth.in_flight in (0, None)

    assert wait_until(settled, timeout=30)
    # What is left still runs most urgent first.
    with worker(real_broker, threads=1):
        assert wait_until(lambda: len(recorder) >= 40, timeout=60)
    levels = [level for level, _ in recorder.order]
    assert levels == ["critical"] * 20 + ["low"] * 20


def test_dead_worker_recovery_returns_jobs_to_their_level(redis_broker_kind: str) -> None:
    crashed = make_broker(redis_broker_kind)
    flush(crashed)
    assert isinstance(crashed, PriorityRedisBroker)
    record = _declare_recorder(crashed, Recorder())
    for n in range(3):
        record.send_with_options(args=("critical", n), priority="critical")
        record.send_with_options(args=("low", n), priority="low")
    assert len(crashed.do_fetch("jobkit-test", 4)) == 4  # fetched, never acked: the worker "died"

    survivor = build_broker(url_for(redis_broker_kind))
    survivor.heartbeat_timeout = 1  # ms: the crashed broker's heartbeat is already too old
    survivor.maintenance_chance = 1_000_000  # run recovery on this call
    time.sleep(0.01)
    fetched = survivor.do_fetch("jobkit-test", 10)
    levels = [dramatiq.Message.decode(data).options["priority"] for _, data, _ in fetched]
    assert levels == ["critical"] * 3 + ["low"] * 3
    # The four the dead worker held are marked as given back once; the other two are not.
    assert sorted(redeliveries for _, _, redeliveries in fetched) == [0, 0, 1, 1, 1, 1]
    flush(survivor)


@pytest.fixture
def weighted_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBKIT_PRIORITY_MODE", "weighted")


@pytest.mark.parametrize("mode", ["strict", "weighted"])
def test_weighted_mode_lets_low_jobs_progress_under_constant_critical_load(
    redis_broker_kind: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBKIT_PRIORITY_MODE", mode)
    broker = make_broker(redis_broker_kind)
    flush(broker)
    try:
        recorder = Recorder()
        record = _declare_recorder(broker, recorder, sleep_s=0)
        for n in range(200):
            record.send_with_options(args=("low", n), priority="low")
        for n in range(1000):
            record.send_with_options(args=("critical", n), priority="critical")
        with worker(broker, threads=2):
            assert wait_until(lambda: len(recorder) >= 450, timeout=60)
        first = recorder.order[:450]
        criticals_done = sum(level == "critical" for level, _ in first)
        lows_done = sum(level == "low" for level, _ in first)
        assert criticals_done < 1000  # critical load was constant throughout
        if mode == "strict":
            assert lows_done == 0
        else:
            # Expected share 1/(8+1) = 11%; allow for chance.
            assert 0.04 * 450 <= lows_done <= 0.25 * 450, lows_done
    finally:
        flush(broker)
        broker.close()


def test_weighted_mode_is_refused_on_rabbitmq(weighted_env: None) -> None:
    with pytest.raises(BrokerConfigError, match="needs a Redis or embedded broker"):
        build_broker(RABBITMQ_URL)


@pytest.fixture
def legacy_queue() -> Iterator[str]:
    """A RabbitMQ queue declared the plain-Dramatiq way (no x-max-priority)."""
    name = "jobkit-test-legacy"
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    channel = connection.channel()
    channel.queue_delete(name)
    channel.queue_declare(
        name,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{name}.XQ"},
    )
    try:
        yield name
    finally:
        channel = connection.channel()
        for queue in (name, f"{name}.DQ", f"{name}.XQ"):
            channel.queue_delete(queue)
        connection.close()


def test_a_rabbitmq_queue_without_max_priority_gets_a_migration_hint(legacy_queue: str) -> None:
    broker = build_broker(RABBITMQ_URL)
    try:

        @dramatiq.actor(queue_name=legacy_queue, broker=broker)
        def job() -> None: ...

        with pytest.raises(QueueNeedsMigration) as caught:
            job.send()
        message = str(caught.value)
        assert f"queue {legacy_queue!r} already exists with other arguments" in message
        assert "x-max-priority differs" in message
        assert f"rabbitmqctl delete_queue {legacy_queue}" in message
        assert "\n" not in message
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
    finally:
        broker.close()
