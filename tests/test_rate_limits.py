"""Rate and concurrency limits: global, per key, never burning retries; load throttling."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Broker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from brokers import build_broker
from brokers.stack import build_stack
from jobkit.settings import current
from middleware.load_throttle import HostLoad, LoadThrottle
from middleware.rate_limits import RateLimitConfigError, RateLimits, limits_of, parse_rate
from tests.conftest import RABBITMQ_URL, REDIS_URL, env_for, url_for
from tests.support import job_log
from tests.support.job_log import JobLog
from tests.support.limited import HOG_FLAG_ENV, declare_limited
from tests.support.processes import child_env, start_dramatiq, stop_group, wait_until, worker

# ---------------------------------------------------------------- declaration


@pytest.mark.parametrize(
    ("text", "interval_ms"),
    [
        ("20/s", 50.0),
        ("100/s", 10.0),
        ("30/m", 2000.0),
        ("1/h", 3_600_000.0),
        (" 4 / Second", 250.0),
    ],
)
def test_rates_parse_to_an_interval(text: str, interval_ms: float) -> None:
    assert parse_rate(text) == pytest.approx(interval_ms)


@pytest.mark.parametrize("text", ["20", "20/d", "0/s", "-1/s", "fast", 20, None])
def test_bad_rates_are_refused_with_the_accepted_forms(text: object) -> None:
    with pytest.raises(RateLimitConfigError, match="write N/s, N/m or N/h"):
        parse_rate(text)


def _actor_on_redis(**options: object) -> dramatiq.Actor:
    broker = build_broker(REDIS_URL)

    def job(host: str, n: int = 0) -> None: ...

    return dramatiq.actor(job, broker=broker, queue_name="jobkit-test", **options)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"rate_limit": "fast"}, "invalid rate_limit"),
        ({"concurrency_limit": 0}, "concurrency_limit must be an int >= 1"),
        ({"rate_limit": "1/s", "rate_limit_key": "customer"}, "is not one of its arguments"),
        ({"rate_limit_key": "host"}, "rate_limit_key needs rate_limit or concurrency_limit"),
        ({"rate_limit": "1/s", "rate_limit_burst": 0}, "rate_limit_burst must be an int >= 1"),
        ({"rate_limit": "1/s", "rate_limit_max_wait": -5}, "rate_limit_max_wait must be"),
    ],
)
def test_bad_limit_options_fail_at_declaration(options: dict, expected: str) -> None:
    with pytest.raises(RateLimitConfigError, match=expected):
        _actor_on_redis(**options)


def test_limits_are_read_from_actor_options() -> None:
    actor = _actor_on_redis(rate_limit="5/s", concurrency_limit=3, rate_limit_key="host")
    limits = limits_of(actor)
    assert limits is not None
    assert (limits.interval_ms, limits.concurrency, limits.burst) == (200.0, 3, 1)
    message = actor.message("example.com", n=1)
    assert limits.key(message) == "jobkit:limits:job:example.com"


def test_rabbitmq_without_a_limit_store_refuses_to_send_limited_jobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOBKIT_STATE_URL", raising=False)
    monkeypatch.delenv("JOBKIT_RATE_LIMIT_URL", raising=False)
    broker = build_broker(RABBITMQ_URL)
    try:
        # Declaring works, so a package with one limited actor still loads.
        limited = dramatiq.actor(
            lambda: None, actor_name="limited_job", broker=broker, rate_limit="1/s"
        )
        with pytest.raises(RateLimitConfigError, match="set JOBKIT_STATE_URL to a Redis URL"):
            limited.send()
        unlimited = dramatiq.actor(lambda: None, actor_name="unlimited_job", broker=broker)
        unlimited.send()
    finally:
        broker.close()


def test_a_limited_job_reaching_a_worker_without_a_store_is_dead_lettered_not_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = StubBroker(middleware=build_stack())
    runs: list[int] = []
    limited = dramatiq.actor(runs.append, actor_name="limited_job", broker=broker, rate_limit="1/s")
    with pytest.raises(RateLimitConfigError, match="declares limits but"):
        limited.send(1)
    # As if sent by a process that had a store: straight onto the queue.
    broker.queues[limited.queue_name].put(limited.message(1).encode())
    with caplog.at_level(logging.ERROR), worker(broker, threads=1):
        assert wait_until(lambda: broker.dead_letters, 10)
    assert runs == []
    assert "rate_limits.unavailable" in caplog.text and "limited_job" in caplog.text
    assert "limits_unavailable" in caplog.text


# ---------------------------------------------------------------- 20/s across processes


def _rate(starts: list[float], trim: float = 0.0) -> float:
    """Jobs per second between the first and last start, after dropping ``trim`` of each end."""
    starts = sorted(starts)
    cut = int(len(starts) * trim)
    starts = starts[cut : len(starts) - cut]
    return (len(starts) - 1) / (starts[-1] - starts[0])


@pytest.mark.slow
def test_a_20_per_second_limit_holds_across_two_worker_processes(
    real_broker: Broker, real_broker_kind: str, tmp_path: Path
) -> None:
    jobs = 150
    log_path, worker_log = tmp_path / "jobs.jsonl", tmp_path / "workers.log"
    env = child_env(
        url_for(real_broker_kind), JOBKIT_TEST_JOB_LOG=str(log_path), **env_for(real_broker_kind)
    )
    limited = declare_limited(real_broker)
    workers = start_dramatiq(
        "tests.support.limited_worker", "-p", "2", "-t", "8", "-Q", "jobkit-test",
        "--worker-shutdown-timeout", "5000", env=env, log=worker_log,
    )  # fmt: skip
    try:
        for n in range(jobs):
            limited.limited.send(n)
        done = wait_until(
            lambda: sum(e["event"] == "end" for e in job_log.read(log_path)) >= jobs,
            timeout=jobs / 20 + 60,
            interval=0.2,
        )
        assert done, worker_log.read_text()[-3000:]
    finally:
        assert stop_group(workers) == 0, worker_log.read_text()[-3000:]

    events = job_log.read(log_path)
    starts = [e for e in events if e["event"] == "start"]
    ends = [e for e in events if e["event"] == "end"]
    assert sorted(e["args"][0] for e in starts) == list(range(jobs)), "each job exactly once"
    assert len(ends) == jobs and not any(e["failed"] for e in ends)
    assert all(e["retries"] == 0 for e in starts), "a deferral consumed a retry"
    assert sum(e["deferrals"] for e in starts) > 0, "nothing was over the limit"
    # Never over the limit (10% slack for timing); under a loaded machine deferred jobs
    # start late, which only lowers the rate.
    assert 16.0 <= _rate([e["t"] for e in starts]) <= 22.0
    log = worker_log.read_text()
    assert "[ERROR]" not in log and "[CRITICAL]" not in log and "was skipped" not in log


def test_two_keys_at_10_per_second_proceed_independently(real_broker: Broker) -> None:
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"jk-keys-{os.getpid()}.jsonl"
    log_path.unlink(missing_ok=True)
    real_broker.add_middleware(JobLog(log_path))
    limited = declare_limited(real_broker)
    for n in range(40):
        limited.per_key.send("a", n)
        limited.per_key.send("b", n)
    try:
        with worker(real_broker, threads=8):
            assert wait_until(
                lambda: sum(e["event"] == "end" for e in job_log.read(log_path)) >= 80, timeout=60
            )
        starts = [e for e in job_log.read(log_path) if e["event"] == "start"]
        # Trimmed: one straggler held up by a busy machine says little about the limit.
        for key in ("a", "b"):
            assert 8.5 <= _rate([e["t"] for e in starts if e["args"][0] == key], 0.05) <= 11.5
        assert 17.0 <= _rate([e["t"] for e in starts], 0.05) <= 23.0
    finally:
        log_path.unlink(missing_ok=True)


# ---------------------------------------------------------------- concurrency leases


def _max_overlap(events: list[dict]) -> int:
    timeline = sorted(
        [(e["t"], 1) for e in events if e["event"] == "start"]
        + [(e["t"], -1) for e in events if e["event"] == "end"],
        key=lambda point: (point[0], point[1]),
    )
    running = peak = 0
    for _, step in timeline:
        running += step
        peak = max(peak, running)
    return peak


def test_concurrency_limit_2_with_8_threads(real_broker: Broker, tmp_path: Path) -> None:
    log_path = tmp_path / "jobs.jsonl"
    real_broker.add_middleware(JobLog(log_path))
    limited = declare_limited(real_broker)
    for n in range(16):
        limited.exclusive.send("k", 100, fail=n % 4 == 0)  # some fail: their slot is freed too
    started = time.monotonic()
    with worker(real_broker, threads=8):
        assert wait_until(
            lambda: sum(e["event"] == "end" for e in job_log.read(log_path)) >= 16, timeout=60
        )
    elapsed = time.monotonic() - started
    events = job_log.read(log_path)
    assert _max_overlap(events) == 2
    assert sum(e["failed"] for e in events if e["event"] == "end") == 4
    assert all(e["retries"] == 0 for e in events)
    assert elapsed >= 16 * 0.1 / 2


def test_a_long_job_keeps_its_slot_by_renewing_the_lease(
    real_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_path = tmp_path / "jobs.jsonl"
    for middleware in real_broker.middleware:
        if isinstance(middleware, RateLimits):
            middleware.lease_ms = 300  # much shorter than the jobs below
    real_broker.add_middleware(JobLog(log_path))
    limited = declare_limited(real_broker)
    for _ in range(4):
        limited.exclusive.send("k", 1200)
    with worker(real_broker, threads=8):
        assert wait_until(
            lambda: sum(e["event"] == "end" for e in job_log.read(log_path)) >= 4, timeout=60
        )
    assert _max_overlap(job_log.read(log_path)) == 2


@pytest.mark.slow
def test_a_sigkilled_workers_slot_is_freed_within_the_lease(
    real_broker: Broker, real_broker_kind: str, tmp_path: Path
) -> None:
    lease_ms = 2000
    log_path, hog_flag = tmp_path / "jobs.jsonl", tmp_path / "hog"
    hog_flag.touch()
    env = child_env(
        url_for(real_broker_kind),
        JOBKIT_TEST_JOB_LOG=str(log_path),
        JOBKIT_CONCURRENCY_LEASE_MS=str(lease_ms),
        **{HOG_FLAG_ENV: str(hog_flag)},
        **env_for(real_broker_kind),
    )
    limited = declare_limited(real_broker)
    doomed = start_dramatiq(
        "tests.support.limited_worker", "-p", "1", "-t", "4", "-Q", "jobkit-test",
        env=env, log=tmp_path / "doomed.log",
    )  # fmt: skip
    try:
        limited.exclusive.send("k", -1)  # hogs while the flag exists
        limited.exclusive.send("k", -1)
        assert wait_until(
            lambda: sum(e["event"] == "start" for e in job_log.read(log_path)) >= 2, timeout=60
        ), (tmp_path / "doomed.log").read_text()[-2000:]
    finally:
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
    killed_at = time.time()
    hog_flag.unlink()  # the hogs, if redelivered, now finish at once

    survivor = start_dramatiq(
        "tests.support.limited_worker", "-p", "1", "-t", "4", "-Q", "jobkit-test",
        env=env, log=tmp_path / "survivor.log",
    )  # fmt: skip
    try:
        limited.exclusive.send("k", 0)
        assert wait_until(
            lambda: any(
                e["event"] == "start" and e["args"][1] == 0 for e in job_log.read(log_path)
            ),
            timeout=60,
        ), (job_log.read(log_path), (tmp_path / "survivor.log").read_text()[-3000:])
    finally:
        stop_group(survivor)
    (quick,) = [e for e in job_log.read(log_path) if e["event"] == "start" and e["args"][1] == 0]
    # Free within the lease, plus worker boot and deferral slack.
    assert quick["t"] - killed_at < lease_ms / 1000 + 12


# ---------------------------------------------------------------- load throttling


class FakeLoad:
    def __init__(self) -> None:
        self.overloaded = False

    def __call__(self) -> HostLoad:
        return HostLoad(load_per_core=5.0 if self.overloaded else 0.1, memory_percent=10.0)


def test_overload_pauses_job_starts_and_resumes_after(
    real_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobkit.load_throttle")
    load = FakeLoad()
    (throttle,) = [m for m in real_broker.middleware if isinstance(m, LoadThrottle)]
    throttle.max_load, throttle.interval_ms, throttle.load_source = 1.0, 50, load
    log_path = tmp_path / "jobs.jsonl"
    real_broker.add_middleware(JobLog(log_path))
    limited = declare_limited(real_broker)
    heartbeat = None
    with worker(real_broker, threads=4):
        load.overloaded = True
        assert wait_until(lambda: throttle.paused, timeout=10)
        for n in range(20):
            limited.exclusive.send(f"k{n}", 0)
        time.sleep(1.0)
        assert job_log.read(log_path) == [], "a job started while the host was overloaded"
        if isinstance(real_broker, RedisBroker):
            heartbeat = real_broker.client.zscore("dramatiq:__heartbeats__", real_broker.broker_id)
            time.sleep(0.3)
            assert (
                real_broker.client.zscore("dramatiq:__heartbeats__", real_broker.broker_id)
                > heartbeat
            ), "no heartbeat while paused"
        load.overloaded = False
        assert wait_until(
            lambda: sum(e["event"] == "end" for e in job_log.read(log_path)) >= 20, timeout=30
        )
    messages = [r.getMessage() for r in caplog.records if r.name == "jobkit.load_throttle"]
    assert sum("host overloaded (load 5.00 per core > 1.00)" in m for m in messages) == 1
    assert sum("back to normal" in m for m in messages) == 1


def test_throttle_thresholds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBKIT_THROTTLE_LOAD", "2.5")
    monkeypatch.setenv("JOBKIT_THROTTLE_MEMORY", "90")
    throttle = LoadThrottle.from_settings(current())
    assert throttle.enabled
    assert throttle.over(HostLoad(3.0, 50.0)) == ["load 3.00 per core > 2.50"]
    assert throttle.over(HostLoad(1.0, 95.0)) == ["memory 95% > 90%"]
    # Resumes only below 90% of each threshold.
    assert throttle.over(HostLoad(2.4, 50.0), 0.9) == ["load 2.40 per core > 2.25"]
    monkeypatch.setenv("JOBKIT_THROTTLE_LOAD", "lots")
    with pytest.raises(ValueError, match="JOBKIT_THROTTLE_LOAD='lots': must be a positive number"):
        LoadThrottle.from_settings(current())
    monkeypatch.delenv("JOBKIT_THROTTLE_LOAD")
    monkeypatch.delenv("JOBKIT_THROTTLE_MEMORY")
    assert not LoadThrottle.from_settings(current()).enabled


def test_a_callable_key_splits_limits_by_its_result() -> None:
    actor = _actor_on_redis(rate_limit="1/s", rate_limit_key=lambda args, kwargs: args[0].upper())
    limits = limits_of(actor)
    assert limits is not None
    assert limits.key(actor.message("example.com")) == "jobkit:limits:job:EXAMPLE.COM"


def test_a_job_that_would_wait_past_max_wait_is_dead_lettered_without_retries(
    real_broker: Broker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from brokers import queue_depths
    from middleware import job_events, log_config

    monkeypatch.setattr(log_config, "CONFIGURED", "json")  # job events on, handlers untouched
    monkeypatch.setattr(job_events, "JOB_EVENTS", None)  # through logging, where caplog sees them
    caplog.set_level(logging.INFO)
    log_path = tmp_path / "jobs.jsonl"
    real_broker.add_middleware(JobLog(log_path))

    @dramatiq.actor(
        queue_name="jobkit-test", broker=real_broker, rate_limit="1/s", rate_limit_max_wait=1500
    )
    def slow_partner(n: int) -> None: ...

    for n in range(5):
        slow_partner.send(n)

    def dead() -> int:
        return sum(d.dead_lettered for d in queue_depths(real_broker, {"jobkit-test"}))

    with worker(real_broker, threads=2):
        # Slots at 0 s and 1 s fit the 1.5 s budget; 2 s, 3 s and 4 s do not.
        assert wait_until(lambda: dead() == 3, timeout=30)
        assert wait_until(
            lambda: sum(e["event"] == "end" for e in job_log.read(log_path)) == 2, timeout=30
        )
    assert all(e["retries"] == 0 for e in job_log.read(log_path))
    dead_events = [
        r for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == "job.dead_lettered"
    ]  # fmt: skip
    assert len(dead_events) == 3
    assert all(r.levelname == "WARNING" and r.msg["reason"] == "rate_limited" for r in dead_events)
    assert "rate_limit_max_wait" in dead_events[0].msg["exc_message"]
    assert dead_events[0].msg["exc_type"] == "RateLimitWaitExceeded"
    skipped = [
        r for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "job.skipped"
    ]
    assert skipped == [], "a rate-limited dead letter is not also a skip"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
