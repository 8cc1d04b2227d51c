"""Per-delivery state for middleware: thread-local, not keyed by message id.

Every hook of one delivery (``before_process_message``, the actor, Retries'
re-enqueue, ``after_ack``/``after_nack``) runs in the worker thread that took
the message, while the next attempt of the same message (same message id) may
already run in another thread. State kept in a dict by message id would mix
the two; state kept per thread cannot.
"""

from __future__ import annotations

from threading import get_ident
from typing import Any

from dramatiq import Message
from dramatiq.broker import MessageProxy


def unwrap(message: Message | MessageProxy) -> Message:
    """The Message inside a worker's MessageProxy.

    Every attribute read on a proxy is a Python-level ``__getattr__`` call; the
    hooks that run for every job read the message a dozen times, so they read
    the wrapped message instead.
    """
    inner = message.__dict__.get("_message") if isinstance(message, MessageProxy) else None
    return inner if inner is not None else message


class CurrentDelivery:
    """What one middleware remembers about the message this worker thread is handling.

    Kept in a dict by thread id (a dict lookup is cheaper than ``threading.local``
    on every hook); the message id check keeps a reused thread id from reading a
    dead thread's leftover.
    """

    def __init__(self) -> None:
        self._states: dict[int, dict[str, Any]] = {}

    def start(self, message: Message, **state: Any) -> dict[str, Any]:
        state["message_id"] = message.message_id
        self._states[get_ident()] = state
        return state

    def get(self, message: Message) -> dict[str, Any] | None:
        state = self._states.get(get_ident())
        return state if state is not None and state["message_id"] == message.message_id else None

    def running(self) -> list[dict[str, Any]]:
        """Every worker thread's current state (a snapshot, safe while threads change theirs)."""
        return list(self._states.values())

    def end(self, message: Message) -> dict[str, Any] | None:
        thread = get_ident()
        state = self._states.get(thread)
        if state is None or state["message_id"] != message.message_id:
            return None
        del self._states[thread]
        return state


def queue_latency_ms(message: Message, now_ms: int) -> int:
    """Time from when a message became runnable (enqueued, or its eta) to ``now_ms``.

    ``enqueued_at`` is stamped by JobLogging at each enqueue; a message from a
    producer without it falls back to Dramatiq's creation timestamp.
    """
    options = message.options
    ready_at = max(
        int(options.get("enqueued_at") or message.message_timestamp), int(options.get("eta") or 0)
    )
    return max(now_ms - ready_at, 0)
