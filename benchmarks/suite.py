"""The benchmark suite: every scenario, on every broker asked for, in one run.

Scenarios (names for ``--scenarios``):

- ``enqueue``: messages/s sent from one process: jobkit's ``send`` (publisher
  confirms on RabbitMQ), jobkit's ``send_many``, and plain Dramatiq's ``send``
  (RabbitMQ: without and with ``confirm_delivery``);
- ``drain``: no-op jobs/s drained by 1 process x 1 thread (an eighth of the jobs), 1 x 8 and 2 x 8
  workers, jobkit's full stack (JSON job logs, metrics, every middleware) against
  plain Dramatiq, A/B interleaved;
- ``latency_bound``: jobs that sleep 10 ms, 1 x 8, jobkit against Dramatiq;
- ``e2e_latency``: send-to-finish latency of no-op jobs sent at a fixed rate
  below capacity (p50/p95/p99);
- ``priority``: how long an urgent job waits behind a backlog of 2 ms jobs
  (jobkit levels against Dramatiq's actor priorities);
- ``peers``: Celery (threads pool, 8) on Redis and RabbitMQ and RQ
  (SimpleWorker) on Redis, on the same no-op work, when installed;
- ``records``: job records on vs off: no-op drain 1 x 8, ``send`` and
  ``send_many`` (``benchmarks.record_costs``);
- ``records_scale`` (also ``records-scale``): ``--records`` finished job records
  in the state Redis, then list, show and resolve times and memory per record
  (``benchmarks.record_scale``).

Workers run through the real CLIs; completions are counted in files outside
the broker; each measurement starts from an empty queue; the first 5% of a
drain is warm-up. Each measurement repeats ``--repeat`` times.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import peers, record_costs, record_scale
from benchmarks.harness import (
    JOBKIT_APP,
    PLAIN,
    System,
    drain_rate,
    free_port,
    interleaved,
    record_client,
    running_workers,
    scratch,
    wait_for,
)
from benchmarks.plain import plain_broker
from benchmarks.priorities import percentile, urgent_latency
from benchmarks.workload import QUEUE, declare
from brokers import build_broker, send_many
from jobkit.settings import load_settings

SCENARIOS = (
    "enqueue", "drain", "latency_bound", "e2e_latency", "priority", "peers", "records",
    "records_scale",
)  # fmt: skip
DRAIN_SHAPES = ((1, 1), (1, 8), (2, 8))
#: A plain run's scenarios: records_scale (a million records) runs when named.
DEFAULT_SCENARIOS = tuple(name for name in SCENARIOS if name != "records_scale")
#: --quick skips 1 x 1: a worker boot per measurement is most of a quick run's time.
QUICK_DRAIN_SHAPES = ((1, 8), (2, 8))
#: Finished job records for records_scale: the issue's million; --quick writes fewer.
RECORDS, QUICK_RECORDS = 1_000_000, 100_000


def full_stack() -> System:
    """jobkit as shipped: every middleware, JSON job logs at INFO, metrics with their exporter."""
    return System(
        "jobkit",
        JOBKIT_APP,
        QUEUE,
        (),
        (
            ("JOBKIT_LOG_FORMAT", "json"),
            ("JOBKIT_METRICS", "on"),
            ("JOBKIT_METRICS_PORT", str(free_port())),
        ),
    )


@dataclass(frozen=True)
class Settings:
    messages: int
    repeat: int
    enqueue_messages: int
    single_sends: int
    latency_rate: float
    latency_seconds: float
    backlog: int
    trials: int
    drain_shapes: tuple[tuple[int, int], ...] = DRAIN_SHAPES
    #: Finished job records written for ``records_scale``.
    records: int = RECORDS

    @classmethod
    def of(cls, messages: int, repeat: int, quick: bool, records: int | None = None) -> Settings:
        if quick:
            return cls(
                messages, repeat, messages, min(messages, 500), 100, 1.0, 500, 5,
                QUICK_DRAIN_SHAPES, records or QUICK_RECORDS,
            )  # fmt: skip
        return cls(
            messages, repeat, messages, min(messages, 2000), 200, 5, 5000, 20, DRAIN_SHAPES,
            records or RECORDS,
        )  # fmt: skip


class Runner:
    """Runs measurements, reporting each to ``step(label)`` (the progress bar)."""

    def __init__(self, settings: Settings, step: Callable[[str], None]) -> None:
        self.settings = settings
        self.step = step

    # -- enqueue -----------------------------------------------------------------

    def enqueue(self, url: str) -> dict[str, list[float]]:
        s = self.settings
        kinds = ["jobkit send", "jobkit send_many", "dramatiq send"]
        if url.startswith("amqp"):
            kinds.append("dramatiq send (confirm_delivery)")
        samples: dict[str, list[float]] = {kind: [] for kind in kinds}
        for run in range(s.repeat):
            for kind in kinds if run % 2 == 0 else kinds[::-1]:
                self.step(f"enqueue: {kind}")
                samples[kind].append(self._enqueue_rate(url, kind))
        return samples

    def _enqueue_rate(self, url: str, kind: str) -> float:
        from brokers import build_broker

        if kind.startswith("jobkit"):
            broker = build_broker(url)
        else:
            broker = plain_broker(url, confirm_delivery="confirm" in kind)
        bench = declare(broker, jobkit=kind.startswith("jobkit"))
        broker.declare_queue(bench.noop.queue_name)
        broker.flush_all()
        try:
            if kind == "jobkit send_many":
                messages = [bench.noop.message() for _ in range(self.settings.enqueue_messages)]
                started = time.perf_counter()
                send_many(messages, broker=broker)
                return len(messages) / (time.perf_counter() - started)
            count = self.settings.single_sends
            started = time.perf_counter()
            for _ in range(count):
                bench.noop.send()
            return count / (time.perf_counter() - started)
        finally:
            broker.flush_all()
            broker.close()

    # -- drains ------------------------------------------------------------------

    def ab(self, label: str, a: System, b: System, measure: Callable[[System], float]) -> dict:
        """``a`` and ``b`` measured ``repeat`` times, interleaved; ratios a/b pair by pair."""
        pair = interleaved(
            a,
            b,
            measure,
            repeat=self.settings.repeat,
            on_run=lambda run, system: self.step(f"{label}: {system.name}"),
        )
        return {a.name: pair["a"], b.name: pair["b"], "ratios": pair["ratios"]}

    def drain(self, url: str) -> dict[str, Any]:
        jobkit = full_stack()
        return {
            f"{p}x{t}": self.ab(
                f"drain {p}x{t}",
                jobkit,
                PLAIN,
                lambda system, p=p, t=t: drain_rate(
                    system, url, jobs=self._drain_jobs(p * t), processes=p, threads=t
                ),
            )
            for p, t in self.settings.drain_shapes
        }

    def _drain_jobs(self, threads: int) -> int:
        # One thread drains about an eighth as fast: an eighth of the jobs keeps runs short.
        return self.settings.messages if threads > 1 else max(self.settings.messages // 8, 100)

    def latency_bound(self, url: str) -> dict[str, Any]:
        jobs = max(self.settings.messages // 10, 200)
        return self.ab(
            "10 ms jobs 1x8",
            full_stack(),
            PLAIN,
            lambda system: drain_rate(system, url, jobs=jobs, job_ms=10),
        )

    # -- latencies ---------------------------------------------------------------

    def e2e_latency(self, url: str) -> dict[str, Any]:
        result = {}
        for system in (full_stack(), PLAIN):
            self.step(f"end-to-end latency: {system.name}")
            result[system.name] = self._offered_load(system, url)
        return result

    def _offered_load(self, system: System, url: str) -> dict[str, Any]:
        s = self.settings
        sender, bench = system.sender(url, confirm=True)
        sender.flush_all()
        count = int(s.latency_rate * s.latency_seconds)
        with scratch() as work, running_workers(system, url, work / "completions"):
            times = work / "times"
            # Warm-up: the worker is up once a first job came back.
            bench.timed.send(time.time(), str(work / "warmup"))
            wait_for(lambda: (work / "warmup").exists(), 60, "the worker to start")
            started = time.monotonic()
            for index in range(count):
                delay = started + index / s.latency_rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                bench.timed.send(time.time(), str(times))
            wait_for(lambda: _lines(times) >= count, 120, f"{count} timed jobs")
            latencies = [
                (float(done) - float(sent)) * 1000
                for sent, done in (line.split() for line in times.read_text().splitlines())
            ]
        sender.flush_all()
        sender.close()
        return {
            "offered_per_s": s.latency_rate,
            "samples_ms": latencies,
            **{f"p{p}": percentile(latencies, p) for p in (50, 95, 99)},
        }

    def priority(self, url: str) -> dict[str, Any]:
        s = self.settings
        result = {}
        for system in (full_stack(), PLAIN):
            self.step(f"urgent job behind {s.backlog} jobs: {system.name}")
            measured = urgent_latency(
                system, url, backlog=s.backlog, job_ms=2, trials=s.trials, pause_s=0.05
            )
            samples = [x * 1000 for x in measured["latency_s"]]
            result[system.name] = {
                "samples_ms": samples,
                **{f"p{p}": percentile(samples, p) for p in (50, 95)},
            }
        return result

    # -- job records ---------------------------------------------------------------

    def records(self, url: str) -> dict[str, Any]:
        s = self.settings
        return record_costs.on_off(
            url,
            repeat=s.repeat,
            jobs=s.messages,
            sends=s.single_sends,
            bulk=s.enqueue_messages,
            step=self.step,
        )

    def records_scale(self, url: str) -> dict[str, Any]:
        # The environment as it is now (broker_environment may have set JOBKIT_STATE_URL).
        broker = build_broker(url, settings=load_settings())
        try:
            client = record_client(broker)
            if client is None:
                return {"skipped": "no state Redis (set JOBKIT_STATE_URL)"}
            return record_scale.measure(client, self.settings.records, self.step)
        finally:
            broker.close()

    # -- peers -------------------------------------------------------------------

    def peers(self, urls: dict[str, str]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for peer, broker_names in peers.PEERS.items():
            if not peers.installed(peer):
                result[peer] = {"skipped": f"{peer} is not installed (pip install -e '.[bench]')"}
                continue
            for name in broker_names:
                if name not in urls:
                    continue
                samples = []
                for _ in range(self.settings.repeat):
                    self.step(f"peer {peer} on {name}")
                    if peer == "celery":
                        samples.append(peers.celery_drain(urls[name], jobs=self.settings.messages))
                    else:
                        samples.append(peers.rq_drain(urls[name], jobs=self.rq_jobs))
                result.setdefault(peer, {})[name] = samples
        return result

    @property
    def rq_jobs(self) -> int:
        # RQ runs about a tenth as fast; the same count would take minutes.
        return max(self.settings.messages // 10, 200)

    def step_count(self, scenarios: list[str], brokers: list[str]) -> int:
        """How many measurements a run takes (the progress bar's total)."""
        r = self.settings.repeat
        per_broker = {
            "enqueue": 0,
            "drain": 2 * r * len(self.settings.drain_shapes),
            "latency_bound": 2 * r,
            "e2e_latency": 2,
            "priority": 2,
            "records": record_costs.STEPS_PER_REPEAT * r,
            "records_scale": 2,
        }
        total = 0
        for name in brokers:
            for scenario in scenarios:
                if scenario == "enqueue":
                    total += r * (4 if name == "rabbitmq" else 3)
                elif scenario != "peers":
                    total += per_broker[scenario]
        if "peers" in scenarios:
            for peer, names in peers.PEERS.items():
                if peers.installed(peer):
                    total += r * len([n for n in names if n in brokers])
        return total


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def versions(urls: dict[str, str]) -> dict[str, str]:
    """Server versions of the brokers measured (recorded with the machine facts)."""
    import pika
    import redis

    found: dict[str, str] = {}
    for name, url in urls.items():
        try:
            if url.startswith("amqp"):
                connection = pika.BlockingConnection(pika.URLParameters(url))
                version = connection._impl.server_properties.get("version", "?")
                if isinstance(version, bytes):
                    version = version.decode()
                found[name] = f"RabbitMQ {version}"
                connection.close()
            else:
                client = redis.Redis.from_url(url)
                info = client.info("server")
                server = "Valkey" if "valkey_version" in info else "Redis"
                found[name] = f"{server} {info.get('valkey_version') or info['redis_version']}"
                client.close()
        except Exception as error:  # noqa: BLE001 - a fact we could not read is noted as such
            found[name] = f"unknown ({type(error).__name__})"
    for package in ("celery", "rq", "kombu"):
        if peers.installed(package):
            from importlib.metadata import version

            found[package] = version(package)
    found["cpu_count"] = str(os.cpu_count())
    return found
