"""RQ's side of the peer comparison: ``rq worker -w rq.worker.SimpleWorker bench-rq``."""

from benchmarks.workload import record_completion

QUEUE = "bench-rq"


def noop() -> None:
    record_completion()
