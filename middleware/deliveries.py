"""Per-delivery state for middleware: thread-local, not keyed by message id.

Every hook of one delivery (``before_process_message``, the actor, Retries'
re-enqueue, ``after_ack``/``after_nack``) runs in the worker thread that took
the message, while the next attempt of the same message (same message id) may
already run in another thread. State kept in a dict by message id would mix
the two; state kept per thread cannot.

``CurrentDelivery`` is one middleware's own state; ``ATTEMPTS`` is the timed
attempt that JobLogging and Metrics share, so a job is timed once.
"""

from __future__ import annotations

from threading import get_ident
from time import monotonic, time
from typing import Any

from dramatiq import Message
from dramatiq.broker import MessageProxy

from .dramatiq_seam import unwrap


class CurrentDelivery:
    """What one middleware remembers about the message this worker thread is handling.

    Kept in a dict by thread id (a dict lookup is cheaper than ``threading.local``
    on every hook); the message id check keeps a reused thread id from reading a
    dead thread's leftover.
    """

    def __init__(self) -> None:
        self._states: dict[int, dict[str, Any]] = {}

    def start(self, message: Message | MessageProxy, **state: Any) -> dict[str, Any]:
        state["message_id"] = message.message_id
        self._states[get_ident()] = state
        return state

    def get(self, message: Message | MessageProxy) -> dict[str, Any] | None:
        state = self._states.get(get_ident())
        return state if state is not None and state["message_id"] == message.message_id else None

    def running(self) -> list[dict[str, Any]]:
        """Every worker thread's current state (a snapshot, safe while threads change theirs)."""
        return list(self._states.values())

    def end(self, message: Message | MessageProxy) -> dict[str, Any] | None:
        thread = get_ident()
        state = self._states.get(thread)
        if state is None or state["message_id"] != message.message_id:
            return None
        del self._states[thread]
        return state


def queue_latency_ms(message: Message, now_ms: float) -> int:
    """Time from when a message became runnable (enqueued, or its eta) to ``now_ms``.

    ``enqueued_at`` is stamped by JobLogging at each enqueue; a message from a
    producer without it falls back to Dramatiq's creation timestamp.
    """
    options = message.options
    ready_at = options.get("enqueued_at") or message.message_timestamp
    eta = options.get("eta")
    try:  # plain comparisons: this runs for every job, and int() and max() cost more
        if eta is not None and eta > ready_at:
            ready_at = eta
        latency = now_ms - ready_at
    except TypeError:  # numbers as strings, from some other producer
        latency = now_ms - max(int(ready_at), int(eta or 0))
    return int(latency) if latency > 0 else 0


#: The fields every job log line carries, in the order of ``Attempt.key``.
JOB_FIELDS = ("message_id", "actor", "queue", "priority", "attempt")


def job_fields(key: tuple[Any, ...]) -> dict[str, Any]:
    """A job's log fields from its key: (message_id, actor, queue, priority, attempt)."""
    return dict(zip(JOB_FIELDS, key, strict=True))


class Attempt:
    """One attempt at a message in a worker thread, timed once for every middleware reading it.

    ``number`` counts this attempt (1 for the first run); ``duration_s`` is None
    while it runs. The job's log fields are built only when asked for
    (``fields``): a job that succeeds is rendered from the slots.
    """

    __slots__ = (
        "delivery",
        "message",
        "message_id",
        "actor",
        "queue",
        "priority",
        "number",
        "key",
        "started",
        "started_at",
        "latency_ms",
        "duration_s",
        "exception",
        "_fields",
    )

    def __init__(self, delivery: Message | MessageProxy) -> None:
        #: What the hooks are handed (a worker's MessageProxy), and the Message inside it.
        self.delivery = delivery
        self.message = message = unwrap(delivery)
        options = message.options
        self.message_id = message_id = message.message_id
        self.actor = actor = message.actor_name
        self.queue = queue = message.queue_name
        self.priority = priority = options.get("priority", "normal")
        self.number = number = options.get("retries", 0) + 1
        #: (message_id, actor, queue, priority, attempt): what every job event of it repeats.
        self.key = (message_id, actor, queue, priority, number)
        self.started = monotonic()
        self.started_at = now = time()
        self.latency_ms = queue_latency_ms(message, now * 1000)
        self.duration_s: float | None = None
        self.exception: BaseException | None = None
        self._fields: dict[str, Any] | None = None

    @property
    def fields(self) -> dict[str, Any]:
        """The job's log fields: message_id, actor, queue, priority, attempt."""
        fields = self._fields
        if fields is None:
            fields = self._fields = job_fields(self.key)
        return fields

    @property
    def labels(self) -> tuple[str, str]:
        """Its metric labels: actor and queue."""
        return self.actor, self.queue

    def finish(self) -> float:
        """Seconds it ran, measured by the first middleware to ask once it ended."""
        if self.duration_s is None:
            self.duration_s = monotonic() - self.started
        return self.duration_s


class Attempts:
    """The attempt each worker thread is running, shared by JobLogging and Metrics.

    The first of them to see a delivery (``begin``) times it; the other reads
    the same record, so a job is timed once, not once per middleware.
    """

    def __init__(self) -> None:
        self._by_thread: dict[int, Attempt] = {}

    def begin(self, message: Message | MessageProxy) -> Attempt:
        """This thread's attempt at ``message``, as handed to ``before_process_message``."""
        thread = get_ident()
        attempt = self._by_thread.get(thread)
        if attempt is None or attempt.delivery is not message:
            attempt = self._by_thread[thread] = Attempt(message)
        return attempt

    def get(self, message: Message | MessageProxy) -> Attempt | None:
        """This thread's attempt at ``message`` (or at a copy of it: the same message id)."""
        attempt = self._by_thread.get(get_ident())
        if attempt is None:
            return None
        # The same object in every hook of one delivery: no attribute read through the proxy.
        if attempt.delivery is message or attempt.message_id == message.message_id:
            return attempt
        return None

    def running(self) -> list[Attempt]:
        """Every worker thread's attempt (a snapshot, safe while threads change theirs)."""
        return list(self._by_thread.values())

    def end(self, message: Message | MessageProxy) -> Attempt | None:
        """Forgets this thread's attempt at ``message`` (at its ack or nack); returns it."""
        attempt = self.get(message)
        if attempt is not None:
            del self._by_thread[get_ident()]
        return attempt


#: Per process: every worker thread's current attempt.
ATTEMPTS = Attempts()
