"""The job ``jobkit demo`` runs: simulated work whose completion is recorded outside the broker."""

import logging
import os
import time
from pathlib import Path

import dramatiq

DEMO_QUEUE = "demo"
DONE_FILE = "done"

logger = logging.getLogger(__name__)


@dramatiq.actor(queue_name=DEMO_QUEUE, max_retries=3, min_backoff=200, max_backoff=2000)
def demo_job(run_dir: str, index: int, work_ms: int = 0) -> None:
    """Work ``work_ms`` ms, then append ``index`` to ``<run_dir>/done``.

    The file lives outside the broker, so the demo (and the tests) count
    completions without trusting the system under test. A job from an old run
    whose directory is gone is acknowledged and ignored.
    """
    done = Path(run_dir) / DONE_FILE
    if not done.parent.is_dir():
        logger.info("demo run directory %s is gone; dropping job %d of that run", run_dir, index)
        return
    time.sleep(max(work_ms, 0) / 1000)
    # One O_APPEND write of a short line is atomic across processes.
    fd = os.open(done, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{index}\n".encode())
    finally:
        os.close(fd)


def completed(run_dir: str | Path) -> set[int]:
    """Indices of the demo jobs of ``run_dir`` that have finished (duplicates collapse)."""
    try:
        text = (Path(run_dir) / DONE_FILE).read_text()
    except FileNotFoundError:
        return set()
    return {int(line) for line in text.split() if line.isdigit()}
