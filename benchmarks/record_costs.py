"""What job records cost: no-op drain (1 x 8) and enqueue with ``JOBKIT_JOB_RECORDS`` 1 vs 0.

The suite's ``records`` scenario. Both sides are jobkit's stack without JSON job
logs and metrics (measured on their own, ``benchmarks.observability``), so the
ratio is the cost of records alone; runs are interleaved (on, off, then off, on)
and ratios taken pair by pair.

- Drain: the queue is filled (with records on, the sender writes each job's
  ``queued`` record first, as in production, and that is waited for), then a
  worker drains it; with records on the window ends when the last job's record
  says ``succeeded``, so the events its writer thread still had count.
- Enqueue: one process sends, one by one (``send``) or in bulk (``send_many``);
  with records on the time includes writing the ``queued`` records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from benchmarks.harness import (
    JOBKIT,
    System,
    clear_records,
    drain_window,
    fill,
    record_client,
    running_workers,
    scratch,
)
from benchmarks.workload import declare
from brokers import build_broker, send_many
from brokers.job_record_store import INDEX, job_records
from jobkit.settings import Settings, load_settings
from middleware.record_sink import SUCCEEDED

RECORDS_ENV = "JOBKIT_JOB_RECORDS"
#: What each enqueue sample does.
SEND, SEND_MANY = "send", "send_many"


def records_system(on: bool) -> System:
    """jobkit without logs and metrics, records on or off (the workers' side)."""
    flag = "1" if on else "0"
    return System(
        f"records {'on' if on else 'off'}",
        JOBKIT.app,
        JOBKIT.queue,
        JOBKIT.without,
        (*JOBKIT.env, (RECORDS_ENV, flag)),
    )


def sender_settings(on: bool) -> Settings:
    """This process's settings with records on or off (the sending side)."""
    return load_settings({**os.environ, RECORDS_ENV: "1" if on else "0"})


def is_on(system: System) -> bool:
    return dict(system.env).get(RECORDS_ENV) == "1"


def drain_rate(system: System, url: str, *, jobs: int) -> float:
    """No-op jobs/s drained by a 1 x 8 worker; with records on, until every record is written."""
    on = is_on(system)
    filler = build_broker(url, settings=sender_settings(on))
    if hasattr(filler, "confirm_delivery"):
        filler.confirm_delivery = False
    bench = declare(filler, jobkit=True)
    client = record_client(filler)
    filler.flush_all()
    clear_records(client)
    try:
        fill(bench.noop, jobs)
        settled: Callable[[], bool] | None = None
        if on and client is not None:
            finished = f"{INDEX}s:{SUCCEEDED}"
            settled = lambda: int(client.zcard(finished)) >= jobs  # noqa: E731
        with scratch() as work, running_workers(system, url, work / "completions"):
            return drain_window(work / "completions", jobs, settled)
    finally:
        filler.flush_all()
        clear_records(client)
        filler.close()


def enqueue_rate(url: str, *, on: bool, kind: str, count: int) -> float:
    """Messages/s sent from this process, records on or off (writing them included)."""
    broker = build_broker(url, settings=sender_settings(on))
    bench = declare(broker, jobkit=True)
    broker.declare_queue(bench.noop.queue_name)
    client = record_client(broker)
    broker.flush_all()
    clear_records(client)
    try:
        if kind == SEND_MANY:
            messages = [bench.noop.message() for _ in range(count)]
            started = time.perf_counter()
            send_many(messages, broker=broker)
        else:
            started = time.perf_counter()
            for _ in range(count):
                bench.noop.send()
        if on:
            job_records(broker).flush(120)
        return count / (time.perf_counter() - started)
    finally:
        broker.flush_all()
        clear_records(client)
        broker.close()


def on_off(
    url: str,
    *,
    repeat: int,
    jobs: int,
    sends: int,
    bulk: int,
    step: Callable[[str], None],
) -> dict[str, Any]:
    """Every measurement records on and off, interleaved; ``{measure: {on, off, ratios}}``."""
    on, off = records_system(True), records_system(False)
    result: dict[str, Any] = {}
    measures: list[tuple[str, Callable[[bool], float]]] = [
        ("drain 1x8", lambda flag: drain_rate(on if flag else off, url, jobs=jobs)),
        (SEND, lambda flag: enqueue_rate(url, on=flag, kind=SEND, count=sends)),
        (SEND_MANY, lambda flag: enqueue_rate(url, on=flag, kind=SEND_MANY, count=bulk)),
    ]
    for name, measure in measures:
        samples: dict[bool, list[float]] = {True: [], False: []}
        for run in range(repeat):
            for flag in (True, False) if run % 2 == 0 else (False, True):
                step(f"records {name}: {'on' if flag else 'off'}")
                samples[flag].append(measure(flag))
        ratios = [a / b for a, b in zip(samples[True], samples[False], strict=True)]
        result[name] = {"on": samples[True], "off": samples[False], "ratios": ratios}
    return result


#: Steps :func:`on_off` reports per repeat (the progress bar's total).
STEPS_PER_REPEAT = 6
