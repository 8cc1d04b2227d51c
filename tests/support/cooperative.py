"""``patient``: a cooperative actor (``cancel_mode="cooperative"``) that runs until cancelled."""

from __future__ import annotations

import time

import dramatiq
from dramatiq import Actor, Broker

from middleware.job_records import cancel_requested

QUEUE = "jobkit-test"


def declare_patient(broker: Broker) -> Actor:
    def patient() -> str:
        """Waits until its job is cancelled (at most 60 s), then says it stopped."""
        deadline = time.monotonic() + 60
        while not cancel_requested() and time.monotonic() < deadline:
            time.sleep(0.01)
        return "stopped"

    return dramatiq.actor(
        patient, broker=broker, queue_name=QUEUE, max_retries=0, cancel_mode="cooperative"
    )
