"""Redis acks sent in batches: one script call for every job that finished meanwhile.

Dramatiq acks each Redis message with its own script call from the worker
thread that ran it: a round trip per job, which took about a third of a
no-op job's time in the worker. Here worker threads hand their acks to one
thread per queue and process, which sends whatever is pending in one call
while the next ones gather. Under load a call carries several acks; when idle
an ack goes out at once.

The cost is a window: a job whose ack is still pending when its worker is
SIGKILLed runs again (as a job that finished just before its ack does in
Dramatiq). A clean shutdown flushes first (the consumer's ``close``). If Redis
does not answer, the acks stay pending and are retried until it does; the
messages meanwhile stay in the worker's unacked set, where dead-worker
recovery finds them if the worker dies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("jobkit.brokers.acks")

#: Ids per script call: Lua's unpack limit is far above, a bounded call keeps Redis responsive.
MAX_BATCH = 500
RETRY_INTERVAL_S = 0.5


class AckBatcher:
    """Collects message ids from worker threads; a daemon thread sends them in batches."""

    def __init__(self, send: Callable[[list[str]], None], *, name: str) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._all_sent = threading.Condition(self._lock)
        self._pending: list[str] = []
        self._sending = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, message_id: str) -> None:
        with self._lock:
            self._pending.append(message_id)
            self._has_work.notify()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending) + self._sending

    def flush(self, timeout: float) -> bool:
        """Wait until every ack handed over so far is sent; False if ``timeout`` s passed first."""
        with self._lock:
            return self._all_sent.wait_for(lambda: not self._pending and not self._sending, timeout)

    def stop(self, timeout: float) -> int:
        """Send what is pending (waiting up to ``timeout`` s), then end the thread.

        Returns how many acks were left unsent (dropped: their jobs run again).
        """
        self.flush(timeout)
        with self._lock:
            self._stopped = True
            left, self._pending = len(self._pending) + self._sending, []
            self._has_work.notify()
        return left

    def _run(self) -> None:
        failing = False
        while True:
            with self._lock:
                while not self._pending:
                    if self._stopped:
                        return
                    self._has_work.wait()
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self._sending = len(batch)
            try:
                self._send(batch)
            except Exception as error:  # noqa: BLE001 - any failure: keep the acks, retry
                with self._lock:
                    self._pending[:0] = batch
                    self._sending = 0
                if not failing:
                    logger.warning(
                        "could not ack %d finished job(s) (%s: %s); retrying every %.1f s",
                        len(batch),
                        type(error).__name__,
                        error,
                        RETRY_INTERVAL_S,
                    )
                failing = True
                time.sleep(RETRY_INTERVAL_S)
                with self._lock:
                    if self._stopped:
                        return
                continue
            if failing:
                logger.warning("acks are going through again")
                failing = False
            with self._lock:
                self._sending = 0
                if not self._pending:
                    self._all_sent.notify_all()
