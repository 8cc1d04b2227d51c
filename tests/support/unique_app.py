"""A unique actor for the tests' other processes: ``jobkit send --app`` and concurrent senders.

``python -m tests.support.unique_app GO_FILE REPORT_ID`` builds the broker, declares
the actor, waits until ``GO_FILE`` exists (so every sender sends at once) and
prints the id its send returned.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import dramatiq

from brokers import check_broker, setup_broker

QUEUE = "jobkit-test"
broker = setup_broker()


@dramatiq.actor(queue_name=QUEUE, unique_key="report_id", unique_for="10m")
def build_report(report_id: int) -> None:
    """One report per id at a time."""


def main() -> None:
    go, report_id = Path(sys.argv[1]), int(sys.argv[2])
    check_broker(broker)  # connected before the start, so the sends race each other
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    print(build_report.send(report_id).message_id, flush=True)


if __name__ == "__main__":
    main()
