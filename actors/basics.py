"""Minimal jobs for smoke tests, health checks and benchmarks."""

import time

import dramatiq


@dramatiq.actor(max_retries=0)
def ping() -> None:
    """Do nothing. Measures the cost of the job system itself."""


@dramatiq.actor(max_retries=0)
def sleep_ms(ms: int) -> None:
    """Sleep ``ms`` milliseconds: stands in for I/O-bound work (an API call, an SMTP send)."""
    if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
        raise ValueError(f"sleep_ms expects a non-negative int of milliseconds, got {ms!r}")
    time.sleep(ms / 1000)
