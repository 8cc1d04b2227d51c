"""Job events written in batches by one thread per process, off the jobs' threads.

Job threads hand events over (:meth:`RecordWriter.put`) and go on; a claim
(a worker received a job) is answered with the next batch, so under load many
claims share one round trip, while the job waits for a worker thread. As with acks
(``brokers/acks.py``), a batch with a claim goes out as soon as the previous one
returned; events alone wait up to ``LINGER_S`` for more (a sender in a loop then
writes dozens of records a round trip instead of one or two).

When the store does not answer, jobs go on: claims are not made (the job
runs), events wait (at most ``MAX_PENDING``; older ones are
dropped) and are retried. One WARNING says when records stopped being
written and one when they are written again, not one per job.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from middleware.record_sink import ClaimReply, Event

logger = logging.getLogger("jobkit.job_records")

MAX_BATCH = 500
MAX_PENDING = 100_000
RETRY_INTERVAL_S = 0.5
#: How long events without a claim wait for more before they are written: a round
#: trip and a script call cost more than the events in them (a claim, a full batch
#: or a flush ends the wait at once).
LINGER_S = 0.002

#: This process's id, kept current across forks (``os.getpid()`` is a system call, and
#: every event checks it: a forked child starts its own writer thread).
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)

Apply = Callable[[Sequence[Event]], list[ClaimReply]]


class _Waiter:
    """A claim's answer to come (:class:`~middleware.record_sink.PendingClaim`)."""

    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: ClaimReply = None

    def wait(self, timeout: float) -> ClaimReply:
        return self.reply if self.done.wait(timeout) else None


#: The answer when the store is down: none (the job runs unrecorded until it is back).
_UNANSWERED = _Waiter()
_UNANSWERED.done.set()


class RecordWriter:
    """Collects events; a daemon thread applies them in batches with ``apply``."""

    def __init__(self, apply: Apply, *, name: str = "jobkit-job-records") -> None:
        self._apply = apply
        self._name = name
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._all_written = threading.Condition(self._lock)
        self._pending: list[tuple[Event, _Waiter | None]] = []
        self._writing = 0
        #: Claims waiting in ``_pending``; the writer lingers only when there are none.
        self._claims = 0
        self._lingering = False
        #: The writer waits for work (it is neither writing nor lingering).
        self._idle = False
        self._flushing = 0
        self._down = False
        self._dropped = 0
        self._pid = -1
        self._thread: threading.Thread | None = None

    @property
    def down(self) -> bool:
        """The store did not answer the last batch."""
        return self._down

    def put(self, event: Event) -> None:
        with self._lock:
            self._ensure_thread()
            self._add((event, None))

    def claim(self, event: Event) -> _Waiter:
        """Hand over a claim; its answer comes with the next batch (``wait()`` for it)."""
        if self._down:  # the job runs meanwhile, unclaimed
            return _UNANSWERED
        waiter = _Waiter()
        with self._lock:
            self._ensure_thread()
            self._add((event, waiter))
        return waiter

    def flush(self, timeout: float) -> bool:
        """Wait until every event handed over so far is written (or dropped)."""
        with self._lock:
            if self._thread is None or self._pid != _pid:
                return not self._pending
            self._flushing += 1  # no lingering: whoever flushes wants the records now
            self._has_work.notify()
            try:
                return self._all_written.wait_for(
                    lambda: not self._pending and not self._writing, timeout
                )
            finally:
                self._flushing -= 1

    def _add(self, item: tuple[Event, _Waiter | None]) -> None:
        pending = self._pending
        if len(pending) >= MAX_PENDING:
            self._drop(MAX_BATCH)
        pending.append(item)
        if item[1] is not None:
            self._claims += 1
        # An idle writer is woken; a lingering one by a claim or a full batch, not by every
        # event; a writing one looks for more when its batch returns.
        if self._idle or (self._lingering and (item[1] is not None or len(pending) >= MAX_BATCH)):
            self._has_work.notify()

    def _ensure_thread(self) -> None:
        # Lazily, and again in a forked child (threads do not survive a fork).
        if self._pid != _pid:
            self._pid = _pid
            self._pending, self._writing, self._claims = [], 0, 0
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
            atexit.register(self.flush, 2.0)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending:
                    self._idle = True
                    self._has_work.wait()
                self._idle = False
                self._linger()
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self._claims -= sum(1 for _, waiter in batch if waiter is not None)
                self._writing = len(batch)
            try:
                replies = self._apply([event for event, _ in batch])
            except Exception as error:  # noqa: BLE001 - any failure: jobs go on, retry later
                self._failed(batch, error)
                time.sleep(RETRY_INTERVAL_S)
                continue
            if self._down:
                self._down = False
                logger.warning(
                    "job records are written again%s",
                    f" ({self._dropped} events were dropped meanwhile)" if self._dropped else "",
                )
                self._dropped = 0
            answers = iter(replies)  # one a claim, in order; every claim has its waiter
            for _event, waiter in batch:
                if waiter is not None:
                    waiter.reply = next(answers, None)
                    waiter.done.set()
            with self._lock:
                self._writing = 0
                if not self._pending:
                    self._all_written.notify_all()

    def _linger(self) -> None:
        """Let events without a claim gather for up to ``LINGER_S`` (the lock held)."""
        deadline = time.monotonic() + LINGER_S
        self._lingering = True
        try:
            while not self._claims and not self._flushing and len(self._pending) < MAX_BATCH:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._has_work.wait(remaining)
        finally:
            self._lingering = False

    def _failed(self, batch: list[tuple[Event, _Waiter | None]], error: Exception) -> None:
        if not self._down:
            self._down = True
            logger.warning(
                "job records: the state store does not answer (%s: %s); jobs run on, and "
                "their records are written when it answers again (best effort)",
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
            )
        kept: list[tuple[Event, _Waiter | None]] = []
        for event, waiter in batch:
            if waiter is not None:  # the job runs unclaimed; its start is its own event
                waiter.done.set()
                continue
            kept.append((event, None))
        with self._lock:
            self._pending[:0] = kept
            self._writing = 0
            over = len(self._pending) - MAX_PENDING
            if over > 0:
                self._drop(over)

    def _drop(self, count: int) -> None:
        """Drop the ``count`` oldest pending events (the lock held)."""
        self._claims -= sum(1 for _, waiter in self._pending[:count] if waiter is not None)
        del self._pending[:count]
        self._dropped += count
