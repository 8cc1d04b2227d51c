"""Broker fixtures: a fresh, flushed broker per test on stub, redis, rabbitmq and embedded.

Which brokers run comes from ``JOBKIT_TEST_BROKERS`` (default: all four). A
selected broker that does not answer fails the test; it is never skipped.
The embedded server used by the tests lives in a private temporary home,
started once per session and stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pika.exceptions
import pytest
from dramatiq import Broker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from jobkit import settings as jobkit_settings

ALL_KINDS = ("stub", "redis", "rabbitmq", "embedded")
REAL_KINDS = ("redis", "rabbitmq", "embedded")
#: The production brokers. The embedded one runs the Redis broker's code: the job
#: library's tests run on these two, the middleware's on all three.
SYSTEM_KINDS = ("redis", "rabbitmq")

# A private embedded home, set before anything imports `actors`, so no test
# touches a developer's ./.jobkit. Short, for the unix socket path limit.
EMBEDDED_HOME = Path(tempfile.mkdtemp(prefix="jk-test-", dir="/tmp"))
os.environ["JOBKIT_HOME"] = str(EMBEDDED_HOME)
os.environ.pop("JOBKIT_BROKER_URL", None)
# Workers started by tests leave metrics off unless a test turns them on (one port per host).
os.environ["JOBKIT_METRICS"] = "off"

#: pytest-xdist runs the suite in parallel processes ("gw0", "gw1", ...); each gets a Redis
#: database and a RabbitMQ vhost of its own (scripts/ensure-services.sh creates the vhosts).
XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
#: Database 14 belongs to the benchmark suite's default URL.
_WORKER_DBS = (15, 13, 12, 11, 10, 9, 8, 7)
TEST_VHOSTS = tuple(f"jobkit-test-gw{n}" for n in range(1, len(_WORKER_DBS)))
REDIS_URL = os.environ.get(
    "JOBKIT_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{_WORKER_DBS[XDIST_WORKER]}"
)
RABBITMQ_URL = os.environ.get(
    "JOBKIT_TEST_RABBITMQ_URL",
    "amqp://guest:guest@127.0.0.1:5672/" + (TEST_VHOSTS[XDIST_WORKER - 1] if XDIST_WORKER else ""),
)
EMBEDDED_URL = f"embedded://{EMBEDDED_HOME}"

# Queues the tests use besides those declared by `actors`; flushed around every test.
TEST_QUEUES = ("default", "demo", "jobkit-test")


def selected_kinds() -> tuple[str, ...]:
    raw = os.environ.get("JOBKIT_TEST_BROKERS", ",".join(ALL_KINDS))
    kinds = tuple(k.strip() for k in raw.split(",") if k.strip())
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown:
        raise pytest.UsageError(f"JOBKIT_TEST_BROKERS names unknown brokers: {sorted(unknown)}")
    return kinds


def url_for(kind: str) -> str:
    return {"redis": REDIS_URL, "rabbitmq": RABBITMQ_URL, "embedded": EMBEDDED_URL}[kind]


def env_for(kind: str) -> dict[str, str]:
    """Environment a process needs for ``kind``: RabbitMQ keeps limit state in the test Redis."""
    return {"JOBKIT_STATE_URL": REDIS_URL} if kind == "rabbitmq" else {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    kinds = selected_kinds()
    if "broker_kind" in metafunc.fixturenames:
        metafunc.parametrize("broker_kind", kinds, scope="function")
    if "redis_broker_kind" in metafunc.fixturenames:  # Redis-protocol internals
        metafunc.parametrize(
            "redis_broker_kind", [k for k in kinds if k in ("redis", "embedded")], scope="function"
        )
    if "system_broker_kind" in metafunc.fixturenames:  # the production brokers
        metafunc.parametrize(
            "system_broker_kind", [k for k in kinds if k in SYSTEM_KINDS], scope="function"
        )
    if "real_broker_kind" in metafunc.fixturenames:
        metafunc.parametrize(
            "real_broker_kind", [k for k in kinds if k in REAL_KINDS], scope="function"
        )


def pytest_sessionstart(session: pytest.Session) -> None:
    """Drop the RabbitMQ test queues, so each run declares them with today's arguments."""
    if "rabbitmq" not in selected_kinds():
        return
    if getattr(session.config.option, "numprocesses", None) and not hasattr(
        session.config, "workerinput"
    ):
        return  # the xdist controller runs no test; each worker drops its own vhost's queues
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        for queue in TEST_QUEUES:
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel.queue_delete(name)
    finally:
        connection.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from brokers import embedded

    try:
        embedded.stop(EMBEDDED_HOME)
    finally:
        shutil.rmtree(EMBEDDED_HOME, ignore_errors=True)


def flush(broker: Broker) -> None:
    """Empty every queue (ready, delayed, dead-lettered, in flight) the tests may touch."""
    if isinstance(broker, RedisBroker):
        # Test Redis db / private embedded server: nothing else lives there.
        broker.client.flushdb()
        return
    from brokers.dead_letter_store import dead_letter_store, has_store

    for middleware in broker.middleware:
        store = getattr(middleware, "store", None)
        if store is not None:
            for key in store.client.scan_iter(match="jobkit:limits:*"):
                store.client.delete(key)
    if has_store(broker):
        client = dead_letter_store(broker).client
        for pattern in ("jobkit:dl:*", "jobkit:job:*", "jobkit:jobs:*"):
            for key in client.scan_iter(match=pattern):
                client.delete(key)
    for queue in set(broker.get_declared_queues()) | set(TEST_QUEUES):
        broker.declare_queue(queue)
    try:
        broker.flush_all()
    except pika.exceptions.AMQPConnectionError:
        # A connection left idle past its heartbeats (a long test) is gone: use a new one.
        del broker.connection
        broker.flush_all()


def make_broker(kind: str) -> Broker:
    """A broker of ``kind`` with jobkit's full middleware stack, checked to answer."""
    from brokers import build_broker, check_broker
    from brokers.stack import build_stack

    if kind == "stub":
        return StubBroker(middleware=build_stack())
    saved = {name: os.environ.get(name) for name in env_for(kind)}
    os.environ.update(env_for(kind))
    try:
        broker = build_broker(url_for(kind))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    check_broker(broker)  # raises: a dead broker fails the test, never skips it
    return broker


@pytest.fixture
def broker(broker_kind: str) -> Iterator[Broker]:
    """A fresh broker of every selected kind (stub included)."""
    yield from _fresh(broker_kind)


@pytest.fixture
def real_broker(real_broker_kind: str) -> Iterator[Broker]:
    """A fresh broker of every selected real kind (redis, rabbitmq, embedded)."""
    yield from _fresh(real_broker_kind)


@pytest.fixture
def redis_broker(redis_broker_kind: str) -> Iterator[Broker]:
    """A fresh Redis or embedded broker (the Redis protocol's internals)."""
    yield from _fresh(redis_broker_kind)


@pytest.fixture
def system_broker(system_broker_kind: str) -> Iterator[Broker]:
    """A fresh Redis or RabbitMQ broker (each selected one)."""
    yield from _fresh(system_broker_kind)


@pytest.fixture
def home() -> Iterator[Path]:
    """A fresh, short embedded home; its server (if one was started) is gone afterwards."""
    from brokers import embedded
    from tests.support.processes import valkey_servers_for

    path = Path(tempfile.mkdtemp(prefix="jk-h-", dir="/tmp"))
    try:
        yield path
    finally:
        embedded.stop(path)
        for pid in valkey_servers_for(path):  # even when a test failed half-way
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)


def _fresh(kind: str) -> Iterator[Broker]:
    broker = make_broker(kind)
    dramatiq.set_broker(broker)
    flush(broker)
    try:
        yield broker
    finally:
        try:
            flush(broker)
        finally:
            broker.close()


def _read_again_after(change: Any) -> Any:
    def changed(self: pytest.MonkeyPatch, name: str, *args: Any, **kwargs: Any) -> None:
        change(self, name, *args, **kwargs)
        if name.startswith(("JOBKIT_", "SENTRY_")):
            jobkit_settings.forget()

    return changed


@pytest.fixture(autouse=True)
def settings_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """jobkit reads its settings once per process; a test that changes a variable gets them
    read again, as a process started with that environment would (``monkeypatch`` calls
    ``jobkit.settings.forget()`` after changing a ``JOBKIT_*`` or ``SENTRY_*`` variable)."""
    jobkit_settings.forget()
    monkeypatch.setattr(pytest.MonkeyPatch, "setenv", _read_again_after(pytest.MonkeyPatch.setenv))
    monkeypatch.setattr(pytest.MonkeyPatch, "delenv", _read_again_after(pytest.MonkeyPatch.delenv))
    yield
    # monkeypatch has put the environment back by now only for its own changes: read again.
    jobkit_settings.forget()
