"""build_broker on every broker kind: middleware stack, round trips, connection settings, errors."""

from __future__ import annotations

import logging
import re
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dramatiq
import pytest
import redis
from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from brokers import BrokerUnavailable, build_broker, check_broker, spec_of
from brokers.liveness import RefusedAtBoot
from brokers.rabbitmq.amqp_priority import AmqpPriority
from brokers.redis.checks import RedisSettingsCheck, unsafe_settings
from brokers.redis.upkeep import DeadWorkerSweep
from brokers.stack import build_stack
from tests.conftest import RABBITMQ_URL, env_for, make_broker, url_for
from tests.support.processes import (
    child_env,
    read_lines,
    start_dramatiq,
    stop_group,
    wait_until,
    worker,
)


def test_every_broker_gets_the_full_middleware_stack(broker: Broker) -> None:
    expected = [type(m) for m in build_stack()]
    if isinstance(broker, RabbitmqBroker):
        expected.append(AmqpPriority)  # maps the stamped level to the AMQP priority
    if isinstance(broker, RedisBroker):
        # Gives a dead worker's jobs back; warns about settings that can lose jobs.
        expected += [DeadWorkerSweep, RedisSettingsCheck]
    if not isinstance(broker, StubBroker):  # build_broker adds it: a worker stops if refused
        expected.append(RefusedAtBoot)
    assert [type(m) for m in broker.middleware] == expected
    # Options of Dramatiq's default middleware are accepted at declaration.
    assert {"max_retries", "time_limit", "max_age", "retry_when"} <= broker.actor_options


def test_a_job_sent_is_run_once_with_its_arguments(broker: Broker) -> None:
    seen: list[tuple[int, str]] = []
    done = threading.Event()

    @dramatiq.actor(queue_name="jobkit-test", broker=broker, max_retries=0)
    def record(number: int, text: str) -> None:
        seen.append((number, text))
        if len(seen) == 3:
            done.set()

    for number in range(3):
        record.send(number, f"job {number}")
    with worker(broker, threads=2):
        if isinstance(broker, StubBroker):
            broker.join("jobkit-test")
        assert done.wait(30), f"only {len(seen)} of 3 jobs ran"
    assert sorted(seen) == [(0, "job 0"), (1, "job 1"), (2, "job 2")]


def test_a_delayed_job_waits_then_runs(real_broker: Broker) -> None:
    ran = threading.Event()

    @dramatiq.actor(queue_name="jobkit-test", broker=real_broker, max_retries=0)
    def later() -> None:
        ran.set()

    with worker(real_broker, threads=1):
        later.send_with_options(delay=1500)
        assert not ran.wait(0.8), "a delayed job ran before its delay"
        assert ran.wait(20), "the delayed job never ran"


def test_a_failing_job_is_dead_lettered_not_lost(real_broker: Broker) -> None:
    from brokers import queue_depths

    @dramatiq.actor(queue_name="jobkit-test", broker=real_broker, max_retries=0)
    def fails() -> None:
        raise RuntimeError("boom")

    fails.send()

    def dead() -> int:
        depths = {d.queue: d for d in queue_depths(real_broker, {"jobkit-test"})}
        return depths["jobkit-test"].dead_lettered

    with worker(real_broker, threads=1):
        assert wait_until(lambda: dead() == 1, timeout=20)


def test_rabbitmq_publishes_with_confirms_heartbeat_and_blocked_timeout() -> None:
    broker = build_broker(RABBITMQ_URL)
    try:
        assert isinstance(broker, RabbitmqBroker)
        assert broker.confirm_delivery is True
        assert broker.parameters.heartbeat == 30
        assert broker.parameters.blocked_connection_timeout == 30
        assert broker.parameters.socket_timeout == 10
    finally:
        broker.close()


def test_rabbitmq_connection_settings_in_the_url_win() -> None:
    broker = build_broker(RABBITMQ_URL + "?heartbeat=5&blocked_connection_timeout=7")
    try:
        assert broker.parameters.heartbeat == 5
        assert broker.parameters.blocked_connection_timeout == 7
    finally:
        broker.close()


def test_redis_url_forms_pick_the_right_connection() -> None:
    tls = build_broker("rediss://127.0.0.1:6380/1")
    unix = build_broker("unix:///tmp/no-such-redis.sock")
    assert isinstance(tls, RedisBroker) and isinstance(unix, RedisBroker)
    assert tls.client.connection_pool.connection_class is redis.SSLConnection
    assert unix.client.connection_pool.connection_class is redis.UnixDomainSocketConnection
    assert tls.client.connection_pool.connection_kwargs["db"] == 1


def test_embedded_broker_talks_to_the_server_over_its_unix_socket() -> None:
    broker = build_broker(url_for("embedded"))
    assert isinstance(broker, RedisBroker)
    kwargs = broker.client.connection_pool.connection_kwargs
    assert kwargs["path"].startswith(str(spec_of(broker).home)) or kwargs["path"].startswith(
        "/tmp/jobkit-"
    )
    assert broker.client.ping()


@pytest.mark.parametrize(
    ("url", "expected", "secret"),
    [
        ("redis://127.0.0.1:1/0", "cannot reach Redis at redis://127.0.0.1:1/0", None),
        (
            "redis://:pw-123@127.0.0.1:1/0",
            "cannot reach Redis at redis://:***@127.0.0.1:1/0",
            "pw-123",
        ),
        ("amqp://guest:guest@127.0.0.1:1/", "cannot reach RabbitMQ", None),
        (
            "amqp://guest:wrong-pw-123@127.0.0.1:5672/",
            "RabbitMQ at amqp://guest:***@127.0.0.1:5672/ refused the credentials",
            "wrong-pw-123",
        ),
        (
            "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
            "denied access to the virtual host",
            None,
        ),
    ],
)
def test_a_broker_that_does_not_answer_gives_one_clear_line(
    url: str, expected: str, secret: str | None
) -> None:
    broker = build_broker(url)
    with pytest.raises(BrokerUnavailable) as caught:
        check_broker(broker)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert "JOBKIT_BROKER_URL" in message
    if secret:
        assert secret not in message


def test_redis_settings_that_can_lose_jobs_are_named(
    redis_broker_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = make_broker(redis_broker_kind)
    client = broker.client
    saved = client.config_get("maxmemory-policy")["maxmemory-policy"]
    try:
        client.config_set("maxmemory-policy", "allkeys-lru")
        problems = unsafe_settings(client)
        assert any("maxmemory-policy is allkeys-lru" in p for p in problems)
        # The system Redis runs without persistence; the embedded server keeps an AOF.
        assert any("no persistence" in p for p in problems) == (redis_broker_kind == "redis")
        with caplog.at_level(logging.WARNING):
            RedisSettingsCheck().after_worker_boot(broker, None)  # type: ignore[arg-type]
        assert "unsafe Redis setting: maxmemory-policy is allkeys-lru" in caplog.text
    finally:
        client.config_set("maxmemory-policy", saved)
        broker.close()
    assert not any("maxmemory" in p for p in unsafe_settings(client))


def with_a_wrong_password(url: str) -> str:
    """``url`` with a password the server refuses (and a user, which Redis needs to refuse)."""
    parts = urlsplit(url)
    user = (parts.username or "") if parts.scheme.startswith("amqp") else "jobkit-nobody"
    return urlunsplit(parts._replace(netloc=f"{user}:wrong-pw-123@{parts.hostname}:{parts.port}"))


def test_stock_dramatiq_stops_at_boot_in_one_line_per_process_when_refused(
    system_broker_kind: str, tmp_path: Path
) -> None:
    log = tmp_path / "workers.log"
    url = with_a_wrong_password(url_for(system_broker_kind))
    env = child_env(url, **env_for(system_broker_kind))
    group = start_dramatiq("tests.support.logged_worker", "-p", "2", "-t", "2", env=env, log=log)
    try:
        code = group.wait(timeout=60)  # generous: it takes about a second
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop_group(group)
    lines = read_lines(log)
    assert code == 3, f"exit code {code}; {len(lines)} lines, the last: {lines[-5:]}"
    refused = [line for line in lines if "refused the credentials" in line]
    # One per worker process; Dramatiq's main process may stop reading its workers' logs
    # before the second one's arrives.
    assert 1 <= len(refused) <= 2, lines
    for line in refused:
        assert '"level":"critical"' in line and "check the user and password" in line
        assert "JOBKIT_BROKER_URL" in line and "wrong-pw-123" not in line
    # Besides them, a few of Dramatiq's own: "booting up", "Stopping worker process...", and
    # its CRITICAL "exited unexpectedly"; no other error, no traceback, nothing from pika.
    assert len(lines) <= 8, lines
    errors = [
        line
        for line in lines
        if re.search(r'"level":"(error|critical)"|\[(ERROR|CRITICAL)\]', line)
    ]
    assert all(line in refused or "exited unexpectedly (code 3)" in line for line in errors)
    assert "Traceback" not in "\n".join(lines) and "pika" not in "\n".join(lines)
