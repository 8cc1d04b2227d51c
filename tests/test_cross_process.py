"""A job sent by one process is run by `dramatiq actors` in another, on every real broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dramatiq import Broker

from brokers import queue_depths
from tests.conftest import url_for
from tests.support.processes import (
    REPO,
    child_env,
    read_lines,
    start_dramatiq,
    stop_group,
    wait_until,
)

PINGS = 500

SENDER = f"""
import actors
for _ in range({PINGS}):
    actors.ping.send()
print("sent")
"""


def test_500_pings_sent_by_the_app_are_processed_by_dramatiq_actors(
    real_broker: Broker, real_broker_kind: str, tmp_path: Path
) -> None:
    completions = tmp_path / "completions"
    env = child_env(url_for(real_broker_kind), JOBKIT_TEST_COMPLETION_LOG=str(completions))
    sender = subprocess.run(
        [sys.executable, "-c", SENDER],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert sender.returncode == 0, sender.stderr
    assert sender.stdout.strip() == "sent"

    log = tmp_path / "workers.log"
    workers = start_dramatiq(
        "actors",
        "tests.support.completion_log",
        "-p",
        "1",
        "-t",
        "4",
        "--worker-shutdown-timeout",
        "5000",
        env=env,
        log=log,
    )
    try:
        finished = wait_until(
            lambda: sum(line.startswith("ping ") for line in read_lines(completions)) >= PINGS,
            timeout=120,
            interval=0.2,
        )
        assert finished, log.read_text()[-3000:]
    finally:
        assert stop_group(workers) == 0, log.read_text()[-3000:]

    lines = [line for line in read_lines(completions) if line.startswith("ping ")]
    assert len(lines) == PINGS
    assert len(set(lines)) == PINGS, "a ping ran twice"
    depths = {d.queue: d for d in queue_depths(real_broker, {"default"})}
    assert depths["default"].ready == 0
    assert depths["default"].dead_lettered == 0
