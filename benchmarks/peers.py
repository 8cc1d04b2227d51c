"""Peers on the same no-op work, through their own CLIs: Celery (threads pool) and RQ.

Installed with the ``bench`` extra (``pip install -e '.[bench]'``); a peer that is
not installed is reported as skipped. Completions are counted in a file outside
the broker, as for Dramatiq, from 5% to 100% done.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from benchmarks.harness import REPO, drain_window, scratch
from benchmarks.workload import COMPLETIONS_ENV
from brokers.processes import start_process_group, stop_process_group

PEERS = {"celery": ("redis", "rabbitmq"), "rq": ("redis",)}


def installed(peer: str) -> bool:
    return importlib.util.find_spec(peer) is not None


def _env(completions: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env[COMPLETIONS_ENV] = str(completions)
    env.update(extra)
    return env


def _measure(command: list[str], env: dict[str, str], completions: Path, jobs: int) -> float:
    log = completions.parent / "worker.log"
    workers = start_process_group(command, env=env, log=log, cwd=REPO)
    try:
        return drain_window(completions, jobs)
    except TimeoutError as error:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise TimeoutError(f"{error}; worker output ended with:\n{tail}") from None
    finally:
        stop_process_group(workers, timeout=3)  # measured; Celery's warm stop can hang


def celery_drain(url: str, *, jobs: int, threads: int = 8) -> float:
    """No-op tasks per second drained by ``celery worker --pool threads -c T``."""
    from benchmarks.apps import celery_app

    sender = celery_app.make_app(url)  # the module's app has the worker's URL
    with sender.connection_for_write() as connection:
        sender.control.purge(connection=connection)
    for _ in range(jobs):
        sender.send_task("bench.noop")
    with scratch() as work:
        completions = work / "completions"
        command = [
            sys.executable, "-m", "celery", "-A", "benchmarks.apps.celery_app", "worker",
            "--pool", "threads", "-c", str(threads), "-Q", celery_app.QUEUE,
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING",
        ]  # fmt: skip
        rate = _measure(command, _env(completions, JOBKIT_BENCH_CELERY_URL=url), completions, jobs)
    with sender.connection_for_write() as connection:
        sender.control.purge(connection=connection)
    sender.close()
    return rate


def rq_drain(url: str, *, jobs: int) -> float:
    """No-op jobs per second drained by ``rq worker -w rq.worker.SimpleWorker``."""
    import redis
    from rq import Queue

    from benchmarks.apps import rq_jobs

    connection = redis.Redis.from_url(url)
    queue = Queue(rq_jobs.QUEUE, connection=connection)
    queue.empty()
    for start in range(0, jobs, 1000):
        batch = [
            Queue.prepare_data(rq_jobs.noop, result_ttl=0) for _ in range(min(1000, jobs - start))
        ]
        queue.enqueue_many(batch)
    with scratch() as work:
        completions = work / "completions"
        command = [
            sys.executable, "-m", "rq.cli", "worker", "-w", "rq.worker.SimpleWorker",
            "--url", url, "--logging_level", "WARNING", rq_jobs.QUEUE,
        ]  # fmt: skip
        rate = _measure(command, _env(completions), completions, jobs)
    queue.empty()
    connection.close()
    return rate
