"""A shipped actor declared again on a test broker: same name and options, test-sized backoff."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq import Broker

QUEUE = "jobkit-test"


def redeclare(
    shipped: dramatiq.Actor,
    broker: Broker,
    fn: Callable[..., Any] | None = None,
    **overrides: Any,
) -> dramatiq.Actor:
    """``shipped`` on ``broker``'s test queue, backoff 20-100 ms unless ``overrides`` say else.

    ``fn`` replaces the function (a wrapper that counts runs, say).
    """
    options = {**shipped.options, "min_backoff": 20, "max_backoff": 100, **overrides}
    return dramatiq.actor(
        fn or shipped.fn, broker=broker, queue_name=QUEUE, actor_name=shipped.actor_name,
        **options,
    )  # fmt: skip
