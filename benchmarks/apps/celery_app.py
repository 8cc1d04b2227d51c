"""``celery -A benchmarks.apps.celery_app worker``: Celery's side of the peer comparison.

One no-op task that counts its completion in ``$JOBKIT_BENCH_COMPLETIONS``,
like the Dramatiq actors; broker from ``$JOBKIT_BENCH_CELERY_URL``; no result
backend (Dramatiq's benchmark actors keep no results either).
"""

import os

from celery import Celery

from benchmarks.workload import record_completion

QUEUE = "bench-celery"


def make_app(url: str) -> Celery:
    app = Celery("jobkit_bench", broker=url)
    app.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app(os.environ.get("JOBKIT_BENCH_CELERY_URL", "memory://"))


@app.task(name="bench.noop")
def noop() -> None:
    record_completion()
