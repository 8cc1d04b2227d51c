"""Periodic jobs: one run per tick with two schedulers, and the shipped periodic jobs."""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import pendulum
import pytest
from dramatiq import Broker
from periodiq import Scheduler, cron

from actors.periodic import (
    QUEUE,
    log_queue_depths,
    purge_expired_dead_letters,
    schedule,
    write_daily_summary,
)
from brokers import queue_depths
from brokers.dead_letter_store import dead_letter_store
from middleware.dead_letters import new_record
from middleware.periodic_ticks import tick_of
from tests.conftest import env_for, url_for
from tests.support.processes import (
    child_env,
    start_process_group,
    stop_group,
    wait_until,
    worker,
)

# ---------------------------------------------------------------- no broker


def test_ticks_are_minutes_in_utc() -> None:
    assert tick_of("2026-11-30T10:15:07+01:00") == "2026-11-30T09:15Z"
    assert tick_of("2026-11-30T09:15:59.900000+00:00") == "2026-11-30T09:15Z"
    assert tick_of("2026-11-30T09:15:00") == "2026-11-30T09:15Z"  # naive: UTC


def test_schedules_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert schedule("daily_summary", "0 6 * * *") == {"periodic": cron("0 6 * * *")}
    monkeypatch.setenv("JOBKIT_CRON_DAILY_SUMMARY", "30 5 * * 1-5")
    assert schedule("daily_summary", "0 6 * * *") == {"periodic": cron("30 5 * * 1-5")}
    monkeypatch.setenv("JOBKIT_CRON_DAILY_SUMMARY", "off")
    assert schedule("daily_summary", "0 6 * * *") == {}


# ---------------------------------------------------------------- one run per tick


class Runs:
    """A periodic job body that records the tick of each run."""

    def __init__(self) -> None:
        self.ticks: list[str] = []
        self.lock = threading.Lock()

    def __call__(self) -> None:
        message = _current.message
        with self.lock:
            self.ticks.append(tick_of(message.options["scheduled_at"]))


class _Current(dramatiq.Middleware):
    """Keeps the message being processed, so the job body can read its tick."""

    message: dramatiq.Message

    def before_process_message(self, broker: Broker, message: dramatiq.Message) -> None:
        _Current.message = message


_current = _Current


def _declare_tick_job(broker: Broker, runs: Runs) -> dramatiq.Actor:
    broker.add_middleware(_Current())
    return dramatiq.actor(
        runs,
        broker=broker,
        actor_name="every_minute",
        queue_name=QUEUE,
        max_retries=0,
        periodic=cron("* * * * *"),
    )


def test_two_schedulers_fire_each_minute_once(system_broker: Broker) -> None:
    runs = Runs()
    actor = _declare_tick_job(system_broker, runs)
    # Ticks in the near future (periodiq skips ticks older than 30 s when processed).
    first = pendulum.now().add(minutes=1).replace(second=1, microsecond=0)
    schedulers = [Scheduler(actors=[actor]), Scheduler(actors=[actor])]
    # Both send the first minute (one at start-up, a few seconds later), then the next one.
    schedulers[0].send_actors([actor], now=first)
    schedulers[1].send_actors([actor], now=first.add(seconds=4))
    for scheduler in schedulers:
        scheduler.send_actors([actor], now=first.add(minutes=1))
    with worker(system_broker, threads=4, queues={QUEUE}):
        assert wait_until(lambda: _drained(system_broker) and len(runs.ticks) >= 2, 20)
        time.sleep(0.3)
    assert sorted(runs.ticks) == [tick_of(str(first)), tick_of(str(first.add(minutes=1)))]
    assert dead_letter_store(system_broker).count() == 0


def test_a_job_sent_by_hand_always_runs(system_broker: Broker) -> None:
    calls: list[int] = []
    actor = dramatiq.actor(
        lambda: calls.append(1),
        broker=system_broker,
        actor_name="every_minute",
        queue_name=QUEUE,
        periodic=cron("* * * * *"),
    )
    actor.send()
    actor.send()
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: len(calls) == 2, 20)


def _drained(broker: Broker) -> bool:
    (depth,) = (d for d in queue_depths(broker, {QUEUE}) if d.queue == QUEUE)
    return depth.ready == 0 and depth.delayed == 0 and not depth.in_flight


@pytest.mark.slow
def test_two_periodiq_processes_send_a_tick_twice_and_it_runs_once(
    system_broker: Broker, system_broker_kind: str, tmp_path: Path
) -> None:
    """The real CLI: two ``periodiq actors`` processes each send the current minute at start."""
    ran: dict[str, list[str]] = {}
    for name in ("snapshot_queue_depths", "purge_old_dead_letters", "daily_summary"):
        ran[name] = []
        dramatiq.actor(
            lambda name=name: ran[name].append(_current.message.options.get("scheduled_at")),
            broker=system_broker,
            actor_name=name,
            queue_name=QUEUE,
            periodic=cron("* * * * *"),
        )
    system_broker.add_middleware(_Current())
    # Both must start in the same minute (periodiq waits for the next one after :55).
    if datetime.now().second >= 45:
        time.sleep(61 - datetime.now().second)
    env = child_env(url_for(system_broker_kind), **env_for(system_broker_kind))
    script = str(Path(sys.executable).parent / "periodiq")
    logs = [tmp_path / "periodiq-a.log", tmp_path / "periodiq-b.log"]
    schedulers = [start_process_group([script, "actors"], env=env, log=log) for log in logs]
    try:
        assert wait_until(
            lambda: all("Scheduling" in log.read_text(errors="replace") for log in logs), 45
        ), [log.read_text(errors="replace")[-2000:] for log in logs]
    finally:
        for scheduler in schedulers:
            stop_group(scheduler)
    with worker(system_broker, threads=4, queues={QUEUE}):
        assert wait_until(lambda: _drained(system_broker) and ran["snapshot_queue_depths"], 20)
        time.sleep(0.3)
    scheduled = [
        line
        for log in logs
        for line in log.read_text().splitlines()
        if "Scheduling" in line and "snapshot_queue_depths" in line
    ]
    assert len(scheduled) == 2, scheduled  # one start-up send per process
    assert len(ran["snapshot_queue_depths"]) == 1


# ---------------------------------------------------------------- the shipped jobs


def test_the_daily_summary_counts_the_last_days_dead_letters(
    system_broker: Broker, tmp_path: Path
) -> None:
    store = dead_letter_store(system_broker)
    now_ms = int(time.time() * 1000)
    for index, (queue, reason, age_h) in enumerate(
        [("emails", "non_retryable", 1), ("emails", "retries_exhausted", 2), ("images", "x", 30)]
    ):
        failed_at_ms = now_ms - age_h * 3_600_000
        store.add(
            new_record(queue=queue, reason=reason, dead_letter_id=f"dl-{index}", actor="job")
            | {"failed_at_ms": failed_at_ms}
        )
    path = write_daily_summary(system_broker, str(tmp_path))
    assert path.name == f"daily-{datetime.now(UTC):%Y-%m-%d}.json"
    summary = json.loads(path.read_text())
    assert summary["dead_letters"] == {
        "total": 2,
        "by_queue": {"emails": 2},
        "by_actor": {"job": 2},
        "by_reason": {"non_retryable": 1, "retries_exhausted": 1},
    }
    assert isinstance(summary["queues"], list)


def test_retention_removes_only_old_dead_letters(
    system_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = dead_letter_store(system_broker)
    monkeypatch.setattr(store, "ttl_ms", 3_600_000)  # JOBKIT_DEAD_LETTER_TTL=1h
    now_ms = int(time.time() * 1000)
    # Written with TTL 0, so the store does not trim them on the way in.
    untrimmed = type(store)(store.client, ttl_ms=0)
    for index, age_min in enumerate([5, 90, 180]):
        record = new_record(queue="jobkit-test", reason="x", dead_letter_id=f"dl-{index}")
        untrimmed.add(record | {"failed_at_ms": now_ms - age_min * 60_000})
    assert purge_expired_dead_letters(system_broker) == 2
    assert [r["id"] for r in store.list()] == ["dl-0"]


def test_the_queue_snapshot_lists_every_queue(system_broker: Broker) -> None:
    dramatiq.actor(lambda: None, broker=system_broker, actor_name="job", queue_name="jobkit-test")
    system_broker.enqueue(
        dramatiq.Message(queue_name="jobkit-test", actor_name="job", args=(), kwargs={}, options={})
    )
    depths = {d["queue"]: d for d in log_queue_depths(system_broker)}
    assert depths["jobkit-test"]["ready"] == 1
