"""pytest plugin for Dramatiq's own tests: its fixtures, built on jobkit's broker classes.

Loaded with ``-p plugin`` by ``tests.conformance.run`` in a pytest process
of its own, rooted in the unpacked Dramatiq sdist (whose ``tests`` package
would clash with jobkit's, so nothing here imports jobkit's ``tests``).

Dramatiq's sdist ships no ``conftest.py``; this plugin provides the fixtures
its broker, worker and actor tests use, as upstream's conftest defines them,
except that ``redis_broker`` and ``rabbitmq_broker`` are built by
``brokers.build_broker`` (jobkit's classes, middleware stack and dead-letter
store) when ``JOBKIT_CONFORMANCE_BROKERS=jobkit``, and by Dramatiq's own
classes when it is ``dramatiq`` (the baseline). Both use the run's own Redis
database and RabbitMQ vhost, never db 0 or ``/``, and flush only those.

It also records each test's outcome as JSON (``--jobkit-outcomes``) for the
runner to compare with the expected differences.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pika.connection
import pika.exceptions
import pytest
import redis
from dramatiq import Broker, Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name, xq_name

BROKERS_ENV = "JOBKIT_CONFORMANCE_BROKERS"
REDIS_URL_ENV = "JOBKIT_CONFORMANCE_REDIS_URL"
RABBITMQ_URL_ENV = "JOBKIT_CONFORMANCE_RABBITMQ_URL"
BROKER_SETS = ("jobkit", "dramatiq")
STATE_URL_ENV = "JOBKIT_STATE_URL"  # brokers.state's; not imported: the baseline needs no jobkit
#: Queues Dramatiq 2.2.1's RabbitMQ tests declare, some through brokers of their own
#: (Dramatiq's class, not the fixture's), with other queue arguments (x-max-priority)
#: than jobkit's, which jobkit's broker refuses to use: each rabbitmq_broker starts
#: without them. Upstream needs no such cleanup: all its brokers declare alike.
TEST_QUEUES = ("default", "some-queue", "flaky_queue", "prioritized")


def brokers_under_test() -> str:
    value = os.environ.get(BROKERS_ENV, "jobkit")
    if value not in BROKER_SETS:
        raise pytest.UsageError(f"{BROKERS_ENV}={value!r}: use one of {BROKER_SETS}")
    return value


def redis_url() -> str:
    return os.environ[REDIS_URL_ENV]


def rabbitmq_url() -> str:
    return os.environ[RABBITMQ_URL_ENV]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--jobkit-outcomes", metavar="PATH", help="write test outcomes as JSON")


def pytest_configure(config: pytest.Config) -> None:
    for name in (REDIS_URL_ENV, RABBITMQ_URL_ENV):
        if not os.environ.get(name):
            raise pytest.UsageError(f"{name} is not set: run this through tests.conformance.run")
    brokers_under_test()
    # As upstream's conftest: INFO logs (some tests read them), quiet pika, fixed seed.
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s",
    )
    logging.getLogger("pika").setLevel(logging.WARNING)
    random.seed(1337)
    # Some tests build RabbitmqBroker(...) with no vhost: keep them off the shared "/".
    vhost = pika.URLParameters(rabbitmq_url()).virtual_host
    pika.connection.Parameters.DEFAULT_VIRTUAL_HOST = vhost
    path = config.getoption("--jobkit-outcomes")
    if path:
        config.pluginmanager.register(OutcomeLog(Path(path)), "jobkit-outcome-log")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail the whole run at once, with one line, if a broker does not answer."""
    try:
        redis.Redis.from_url(redis_url()).ping()
    except redis.RedisError as error:
        pytest.exit(f"conformance: Redis at {redis_url()} does not answer: {error}", 3)
    try:
        pika.BlockingConnection(pika.URLParameters(rabbitmq_url())).close()
    except pika.exceptions.AMQPError as error:
        pytest.exit(f"conformance: RabbitMQ vhost {_vhost()!r} does not answer: {error!r}", 3)


class OutcomeLog:
    """Collects each test's outcome (passed, failed, error, skipped) and writes it as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.collected: list[str] = []
        self.deselected: list[str] = []
        self.collect_errors: dict[str, str] = {}
        self.outcomes: dict[str, str] = {}
        self.messages: dict[str, str] = {}

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors[report.nodeid] = _first_line(report)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += [item.nodeid for item in items]

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected = [item.nodeid for item in session.items]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # The first phase that did not pass decides: an error in setup or teardown
        # counts as "error", a failing call as "failed".
        if self.outcomes.get(report.nodeid, "passed") != "passed":
            return
        if report.failed:
            self.outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
            self.messages[report.nodeid] = _first_line(report)
        elif report.skipped:
            self.outcomes[report.nodeid] = "skipped"
            self.messages[report.nodeid] = _first_line(report)
        else:
            self.outcomes[report.nodeid] = "passed"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.path.write_text(
            json.dumps(
                {
                    "brokers": brokers_under_test(),
                    "collected": self.collected,
                    "deselected": self.deselected,
                    "collect_errors": self.collect_errors,
                    "outcomes": self.outcomes,
                    "messages": self.messages,
                },
                indent=1,
            )
        )


def _first_line(report: pytest.CollectReport | pytest.TestReport) -> str:
    """The crash's one-line message (or the skip reason), for the runner's report."""
    longrepr: Any = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        text = crash.message
    elif isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        text = str(longrepr[2])
    else:
        text = str(longrepr or "")
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def _vhost() -> str:
    return pika.URLParameters(rabbitmq_url()).virtual_host


def _delete_queues(queues: Iterable[str]) -> None:
    """Delete ``queues`` (with their delay and dead-letter queues) from the run's vhost."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url()))
    try:
        channel = connection.channel()
        for queue in queues:
            for name in (queue, dq_name(queue), xq_name(queue)):
                channel.queue_delete(name)
    finally:
        connection.close()


def _flush_state() -> None:
    # The run's own database (broker and jobkit state): Dramatiq's fixtures FLUSHALL,
    # which would wipe the main suite's and the benchmarks' databases too.
    redis.Redis.from_url(redis_url()).flushdb()


def _build(kind: str) -> Broker:
    if brokers_under_test() == "dramatiq":
        if kind == "redis":
            return RedisBroker(url=redis_url())
        return RabbitmqBroker(url=rabbitmq_url(), max_priority=10)  # as upstream's fixture
    from brokers import build_broker, check_broker
    from jobkit.settings import load_settings

    if kind == "redis":  # jobkit's state (dead letters, limits) on the broker's own Redis
        broker = build_broker(redis_url())
    else:
        # As jobkit's tests and deployments: RabbitMQ keeps that state in a Redis
        # (JOBKIT_STATE_URL), here the run's own database.
        settings = load_settings({**os.environ, STATE_URL_ENV: redis_url()})
        broker = build_broker(rabbitmq_url(), settings=settings)
    check_broker(broker)
    return broker


@pytest.fixture()
def stub_broker() -> Iterator[StubBroker]:
    """Dramatiq's StubBroker, as upstream's fixture (jobkit has no stub class of its own)."""
    broker = StubBroker()
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture()
def redis_broker() -> Iterator[RedisBroker]:
    """jobkit's PriorityRedisBroker as ``build_broker`` makes it (or Dramatiq's, baseline)."""
    broker = _build("redis")
    assert isinstance(broker, RedisBroker)
    _flush_state()
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    _flush_state()
    broker.close()


@pytest.fixture()
def rabbitmq_broker() -> Iterator[RabbitmqBroker]:
    """jobkit's PriorityRabbitmqBroker as ``build_broker`` makes it (or Dramatiq's, baseline)."""
    _delete_queues(TEST_QUEUES)
    broker = _build("rabbitmq")
    assert isinstance(broker, RabbitmqBroker)
    broker.connection  # noqa: B018 - upstream's check: connect now, fail here if it cannot
    _flush_state()
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    # Deleted rather than purged (upstream): the next run may be the other broker set,
    # which declares them with other arguments.
    _delete_queues(sorted(broker.get_declared_queues()))
    _flush_state()
    broker.close()


@pytest.fixture()
def stub_worker(stub_broker: StubBroker) -> Iterator[Worker]:
    worker = Worker(stub_broker, worker_timeout=100, worker_threads=32)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture()
def rabbitmq_worker(rabbitmq_broker: RabbitmqBroker) -> Iterator[Worker]:
    worker = Worker(rabbitmq_broker, worker_threads=32)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture()
def redis_worker(redis_broker: RedisBroker) -> Iterator[Worker]:
    worker = Worker(redis_broker, worker_threads=32)
    worker.start()
    yield worker
    worker.stop()
