"""Run a system under test through the real ``dramatiq`` CLI and count what it finishes."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from dramatiq import Broker

from benchmarks.plain import plain_broker
from benchmarks.workload import COMPLETIONS_ENV, PLAIN_QUEUE, QUEUE, BenchActors, declare
from brokers import build_broker, queue_depths
from brokers.job_record_store import INDEX, RECORD, JobRecordError, job_records
from brokers.processes import start_process_group, stop_process_group
from brokers.state import state_client
from jobkit.settings import load_settings

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class System:
    """One side of an A/B comparison: jobkit's stack (maybe less some middleware), or Dramatiq."""

    name: str
    app: str
    queue: str
    #: Middleware class names the jobkit app removes (see benchmarks.apps.jobkit_app).
    without: tuple[str, ...] = ()
    #: Extra environment for its workers.
    env: tuple[tuple[str, str], ...] = ()

    @property
    def is_jobkit(self) -> bool:
        return self.app == JOBKIT_APP

    def sender(self, url: str, *, confirm: bool) -> tuple[Broker, BenchActors]:
        """A broker for the benchmark process plus the actors declared on it.

        ``confirm=False`` gives a fast RabbitMQ publisher for filling backlogs;
        what is measured is sent with the system's own settings.
        """
        if self.is_jobkit:
            broker = build_broker(url)
            if not confirm and hasattr(broker, "confirm_delivery"):
                broker.confirm_delivery = False
        else:
            broker = plain_broker(url)
        return broker, declare(broker, jobkit=self.is_jobkit)

    def worker_env(self, url: str, completions: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env[COMPLETIONS_ENV] = str(completions)
        env["JOBKIT_BROKER_URL" if self.is_jobkit else "JOBKIT_BENCH_PLAIN_URL"] = url
        env["JOBKIT_BENCH_WITHOUT"] = ",".join(self.without)
        env.update(self.env)
        return env


JOBKIT_APP = "benchmarks.apps.jobkit_app"
#: Observability is measured on its own (benchmarks.observability); elsewhere it is off,
#: so a comparison shows the cost of the feature under test.
QUIET = (("JOBKIT_METRICS", "off"),)
WITHOUT_OBSERVABILITY = ("JobLogging", "Metrics")
JOBKIT = System("jobkit", JOBKIT_APP, QUEUE, WITHOUT_OBSERVABILITY, QUIET)
PLAIN = System("dramatiq", "benchmarks.apps.plain_app", PLAIN_QUEUE)


LIMIT_STATE_URL = os.environ.get("JOBKIT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


@contextlib.contextmanager
def broker_environment(broker_name: str) -> Iterator[None]:
    """RabbitMQ keeps rate-limit state in a Redis: point jobkit at the benchmark one."""
    if broker_name != "rabbitmq" or os.environ.get("JOBKIT_STATE_URL"):
        yield
        return
    os.environ["JOBKIT_STATE_URL"] = LIMIT_STATE_URL
    try:
        yield
    finally:
        del os.environ["JOBKIT_STATE_URL"]


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds used so far by the live processes of group ``pgid``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # Fields after the command: state ppid pgrp ... utime(12th) stime(13th).
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


@contextlib.contextmanager
def running_workers(
    system: System, url: str, completions: Path, *, processes: int = 1, threads: int = 8
) -> Iterator[subprocess.Popen[bytes]]:
    """``dramatiq <app> -p P -t T -Q <queue>`` in its own process group, stopped on exit."""
    log = Path(tempfile.mkdtemp(prefix="jobkit-bench-")) / f"{system.name}-workers.log"
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        system.app,
        "-p",
        str(processes),
        "-t",
        str(threads),
        "-Q",
        system.queue,
        "--worker-shutdown-timeout",
        "5000",
    ]
    workers = start_process_group(
        command, env=system.worker_env(url, completions), log=log, cwd=REPO
    )
    try:
        yield workers
    finally:
        stop_process_group(workers)
        shutil.rmtree(log.parent, ignore_errors=True)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A temporary directory for one measurement's files, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="jobkit-bench-") as path:
        yield Path(path)


def completed(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.005
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def ready_count(broker: Broker, queue: str) -> int:
    return sum(d.ready for d in queue_depths(broker, {queue}) if d.queue == queue)


def machine_facts() -> dict[str, Any]:
    import dramatiq
    import pika
    import redis

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dramatiq": dramatiq.__version__,
        "redis_py": redis.__version__,
        "pika": pika.__version__,
        "load_average": os.getloadavg(),
    }


BROKERS = ("redis", "rabbitmq", "embedded")


def add_common_arguments(parser: Any) -> None:
    """``--brokers`` and ``--json``, the same in every benchmark."""
    parser.add_argument(
        "--brokers",
        default=",".join(BROKERS),
        type=lambda text: [b.strip() for b in text.split(",") if b.strip()],
        help="comma-separated: redis, rabbitmq, embedded (default: all)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every raw sample here")


def run_benchmark(
    parser: Any,
    args: Any,
    run: Callable[[Any], dict[str, Any]],
    print_report: Callable[[dict[str, Any]], None],
) -> int:
    """Check the brokers asked for, run, print the table, write the JSON; the exit code."""
    import json

    from jobkit.errors import JobkitError

    unknown = set(args.brokers) - set(BROKERS)
    if unknown:
        parser.error(f"unknown brokers: {', '.join(sorted(unknown))}")
    try:
        report = run(args)
    except (JobkitError, TimeoutError) as error:
        print(f"benchmarks: error: {error}", file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"raw samples written to {args.json}", file=sys.stderr)
    return 0


#: The benchmark brokers; database 14 of the local Redis (flushed by the runs).
URLS = {
    "redis": os.environ.get("JOBKIT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
    "rabbitmq": os.environ.get("JOBKIT_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
}


def fill(actor: Any, count: int, *args: Any) -> None:
    """``count`` messages of ``actor``: in bulk (``send_many``; any broker), not timed.

    Returns once their job records (``queued``) are written too, so that the
    sender's record writer does not compete with the workers measured next.
    """
    from brokers import send_many

    for start in range(0, count, 5000):
        batch = [actor.message(*args) for _ in range(min(5000, count - start))]
        send_many(batch, broker=actor.broker)
    settle_records(actor.broker)


def settle_records(broker: Broker, timeout: float = 120.0) -> None:
    """Wait until the job records ``broker``'s sends made are written (none if records are off)."""
    with contextlib.suppress(JobRecordError):
        if not job_records(broker).flush(timeout):
            raise TimeoutError(f"the senders' job records were not written within {timeout:.0f} s")


def record_client(broker: Broker) -> redis.Redis | None:
    """The state Redis holding ``broker``'s job records, or None (RabbitMQ without one).

    From the environment as it is now: :func:`broker_environment` may have set
    ``JOBKIT_STATE_URL`` after this process first read its settings.
    """
    return state_client(broker, load_settings())[0]


def clear_records(client: redis.Redis | None) -> int:
    """Delete every job record and index in ``client``'s database; how many keys went."""
    if client is None:
        return 0
    deleted = 0
    for pattern in (f"{RECORD}*", f"{INDEX}*"):
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                deleted += int(client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(client.unlink(*batch))
    return deleted


def drain_rate(
    system: System,
    url: str,
    *,
    jobs: int,
    processes: int = 1,
    threads: int = 8,
    job_ms: int | None = None,
) -> float:
    """Jobs per second drained by a P x T worker, from 5% to 100% done (boot excluded).

    No-op jobs, or with ``job_ms`` jobs that sleep that long (latency-bound).
    """
    filler, bench = system.sender(url, confirm=False)
    filler.flush_all()
    records = record_client(filler) if system.is_jobkit else None
    clear_records(records)  # earlier runs' records: each drain starts from none
    if job_ms is None:
        fill(bench.noop, jobs)
    else:
        fill(bench.work, jobs, job_ms)
    with (
        scratch() as work,
        running_workers(system, url, work / "completions", processes=processes, threads=threads),
    ):
        rate = drain_window(work / "completions", jobs)
    filler.flush_all()
    clear_records(records)
    filler.close()
    return rate


def drain_window(completions: Path, jobs: int, settled: Callable[[], bool] | None = None) -> float:
    """Jobs per second while ``completions`` goes from 5% to all ``jobs`` (boot excluded).

    With ``settled``, the window ends once it is also true (e.g. every job's
    record is written), so that work a worker leaves to a background thread counts.
    """
    start_mark = max(jobs // 20, 1)
    wait_for(lambda: completed(completions) >= start_mark, 120, "the first jobs")
    started, done_at_start = time.monotonic(), completed(completions)
    wait_for(lambda: completed(completions) >= jobs, 600, f"{jobs} jobs", 0.001)
    if settled is not None:
        wait_for(settled, 120, "the work left after the jobs", 0.002)
    return (jobs - done_at_start) / (time.monotonic() - started)


def interleaved(
    a: System,
    b: System,
    measure: Callable[[System], float],
    *,
    repeat: int,
    on_run: Callable[[int, System], None],
) -> dict[str, list[float]]:
    """``measure`` of ``a`` and ``b``, A/B then B/A so drift hits both.

    Returns ``{"a": [...], "b": [...], "ratios": [a/b pair by pair]}``.
    """
    samples: dict[str, list[float]] = {"a": [], "b": []}
    pairs = [("a", a), ("b", b)]
    for run in range(repeat):
        for label, system in pairs if run % 2 == 0 else pairs[::-1]:
            on_run(run, system)
            samples[label].append(measure(system))
    ratios = [x / y for x, y in zip(samples["a"], samples["b"], strict=True)]
    return {**samples, "ratios": ratios}


#: Where :func:`free_port` looks: below the kernel's ephemeral range (32768 up, by default).
PORT_RANGE = (20_000, 32_000)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server started next (a metrics exporter...).

    Not one the kernel hands out itself (bind to port 0 does): those are ephemeral ports,
    which any outgoing connection (a Redis or AMQP client) may take as its source port
    before the server binds, so the server would find its port in use. A random port below
    the ephemeral range is free until someone asks for that very port.
    """
    low, high = PORT_RANGE
    ephemeral_low = _ephemeral_low()
    high = min(high, ephemeral_low - 1)
    if high < low:  # the whole range is ephemeral here: take what the kernel gives
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 in {low}-{high}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def noop_throughput(system: System, url: str, *, jobs: int) -> float:
    """No-op jobs per second drained by one 1x8 worker."""
    return drain_rate(system, url, jobs=jobs)


def interleaved_throughput(
    a: System,
    b: System,
    url: str,
    *,
    repeat: int,
    jobs: int,
    say: Callable[[str], None],
    **drain: Any,
) -> dict[str, list[float]]:
    """Drain rates of ``a`` and ``b``, interleaved; ``drain`` goes to :func:`drain_rate`."""
    return interleaved(
        a,
        b,
        lambda system: drain_rate(system, url, jobs=jobs, **drain),
        repeat=repeat,
        on_run=lambda run, system: say(f"  drain rate, run {run + 1}: {system.name}"),
    )


def per_broker(
    args: Any, run_broker: Callable[[Any, str], dict[str, Any]], say: Callable[[str], None]
) -> dict[str, Any]:
    """Run ``run_broker(args, url)`` for each of ``args.brokers``; the report with machine facts."""
    from brokers import embedded

    report: dict[str, Any] = {"machine": machine_facts(), "settings": vars(args), "brokers": {}}
    home = Path(tempfile.mkdtemp(prefix="jk-bench-", dir="/tmp"))
    try:
        for name in args.brokers:
            url = embedded.ensure_server(home).url if name == "embedded" else URLS[name]
            say(f"[bold]{name}[/]")
            with broker_environment(name):
                report["brokers"][name] = run_broker(args, url)
    finally:
        embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)
    return report
