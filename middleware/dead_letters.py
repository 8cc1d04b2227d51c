"""Dead letters: describe a job that failed for good, and tell someone once it is kept.

``before_nack`` describes the failure (reason, exception, traceback, attempts,
the message as sent) on the message; the broker's consumer stores that record
in the dead-letter store (``brokers.dead_letter_store``) and removes the message
from its queue; then ``after_dead_letter`` runs the ``on_dead_letter`` hooks.
Bytes that are not a message never reach middleware: the consumer stores them
as ``undecodable`` and calls ``after_dead_letter`` too.

Why a job was kept is one of :data:`REASONS`.

Long text is kept bounded, its start and its end (``middleware.clipping``): the
exception's message up to ``MAX_MESSAGE_CHARS``, the traceback up to
``JOBKIT_DEAD_LETTER_TRACEBACK`` characters.

Settings: ``JOBKIT_DEAD_LETTER_TRACEBACK`` (characters of the traceback kept;
default 8192), ``JOBKIT_DEAD_LETTER_HOOK`` (``module:function``
called with each record), ``JOBKIT_DEAD_LETTER_WEBHOOK`` (URL that gets each
record, without arguments or raw bytes, as a JSON POST). The ERROR log event
(``job.dead_lettered``) and the Sentry event come from JobLogging and SentryAlerts.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import os
import queue
import socket
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import redis
from dramatiq import Broker, Message
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name

from jobkit.errors import BrokerConfigError
from jobkit.settings import mask_url

from . import outcomes
from .clipping import clip
from .dramatiq_seam import stuffed_exception
from .hooks import JobkitMiddleware

TRACEBACK_ENV = "JOBKIT_DEAD_LETTER_TRACEBACK"
HOOK_ENV = "JOBKIT_DEAD_LETTER_HOOK"
WEBHOOK_ENV = "JOBKIT_DEAD_LETTER_WEBHOOK"
DEFAULT_TRACEBACK_CHARS = 8192
#: Characters of an exception's message kept (its start and its end).
MAX_MESSAGE_CHARS = 2000
#: Bytes of a message that was not one kept in its dead letter (an oversized one may be huge).
MAX_RAW_KEPT = 64 * 1024
#: Record fields a webhook does not get: arguments and raw bytes may hold secrets.
PRIVATE_FIELDS = ("message", "raw")
HOST = socket.gethostname()

logger = logging.getLogger("jobkit.dead_letters")

Hook = Callable[[dict[str, Any]], Any]

#: Every reason a dead letter can carry: what ``outcomes.dead_letter_reason`` says of a job
#: that ran or was skipped, and the ``reason`` of the errors that end one early (the
#: consumers' ``brokers.decoding``, ``CrashLoops``, ``RateLimits``). The manual's table and
#: ``jobkit dead-letters --help`` list the same (``tests/test_docs.py``).
REASONS = (
    "retries_exhausted",  # its last allowed attempt raised
    "non_retryable",  # it raised an exception in its ``throws``
    "time_limit",  # its last allowed attempt hit its ``time_limit``
    "age_limit",  # older than its ``max_age``
    "rate_limited",  # it would wait past ``rate_limit_max_wait``
    "unknown_actor",  # no such actor in the worker
    "undecodable",  # bytes in a queue that are not a message
    "too_large",  # over ``JOBKIT_MAX_MESSAGE_BYTES``
    "bad_signature",  # unsigned or forged, with ``JOBKIT_SIGNING_KEY`` set
    "crash_loop",  # its worker died while running it ``JOBKIT_MAX_CRASHES`` times
    "limits_unavailable",  # a limited actor's job, and no store for limit state
    "not_retried",  # ``retry_when`` said no
    "skipped",  # another middleware failed it without running it
)

#: Options that describe one delivery, not the job: dropped when a job is kept and replayed.
DELIVERY_OPTIONS = frozenset(
    {
        "retries",
        "traceback",
        "requeue_timestamp",
        "redis_message_id",
        "eta",
        "enqueued_at",
        "broker_priority",
        "rate_limit_deferrals",
        "rate_limited_since",
        "rate_limit_slot",
        "replayed_from",
    }
)


def iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def message_as_sent(message: Message | MessageProxy) -> dict[str, Any]:
    """The message's fields without what its deliveries added (retry count, ids, etas)."""
    fields = message.asdict()
    fields["args"] = list(fields["args"])
    fields["options"] = {k: v for k, v in fields["options"].items() if k not in DELIVERY_OPTIONS}
    fields["queue_name"] = q_name(fields["queue_name"])
    return fields


def raw_fields(raw: bytes) -> dict[str, Any]:
    """Bytes that are not a message, kept as text when they are UTF-8, else base64."""
    try:
        return {"raw": raw.decode("utf-8"), "raw_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"raw": base64.b64encode(raw).decode("ascii"), "raw_encoding": "base64"}


def new_record(
    *, queue: str, reason: str, dead_letter_id: str | None = None, **fields: Any
) -> dict[str, Any]:
    """A record with the common fields filled in (``failed_at`` is now)."""
    now_ms = int(time.time() * 1000)
    return {
        "id": dead_letter_id or str(uuid4()),
        "queue": q_name(queue),
        "reason": reason,
        "failed_at": iso_ms(now_ms),
        "failed_at_ms": now_ms,
        **fields,
    }


def describe_failure(
    broker: Broker,
    message: Message | MessageProxy,
    *,
    traceback_chars: int = DEFAULT_TRACEBACK_CHARS,
) -> dict[str, Any]:
    """The dead-letter record of a message being rejected in this worker."""
    exception = stuffed_exception(message)
    formatted = None
    if exception is not None and exception.__traceback__ is not None:
        formatted = "".join(traceback.format_exception(exception))
    elif exception is not None:
        formatted = message.options.get("traceback")
    return new_record(
        dead_letter_id=message.message_id,
        queue=message.queue_name,
        reason=outcomes.dead_letter_reason(broker, message, exception),
        actor=message.actor_name,
        exc_type=type(exception).__name__ if exception is not None else None,
        exc_message=clip(str(exception), MAX_MESSAGE_CHARS) if exception is not None else None,
        traceback=clip(formatted, traceback_chars) if formatted is not None else None,
        attempts=outcomes.attempts(broker, message, exception),
        enqueued_at=iso_ms(int(message.message_timestamp)),
        host=HOST,
        pid=os.getpid(),
        replayed_from=message.options.get("replayed_from"),
        message=message_as_sent(message),
    )


def describe_undecodable(queue_name: str, raw: bytes, error: Exception) -> dict[str, Any]:
    """A record for bytes that are not a job to run (malformed, oversized, forged)."""
    kept = raw[:MAX_RAW_KEPT]
    return new_record(
        queue=queue_name,
        reason=getattr(error, "reason", "undecodable"),
        raw_bytes=len(raw),
        actor=None,
        exc_type=type(error).__name__,
        exc_message=clip(str(error), MAX_MESSAGE_CHARS),
        traceback=None,
        attempts=0,
        enqueued_at=None,
        host=HOST,
        pid=os.getpid(),
        message=None,
        **raw_fields(kept),
    )


def load_hook(spec: str) -> Hook:
    """``package.module:function`` -> the function; a clear error if it does not resolve."""
    module_name, _, attribute = spec.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise BrokerConfigError(
            f"{HOOK_ENV}={spec!r} does not name a function (module:function): {error}"
        ) from None
    if not callable(hook):
        raise BrokerConfigError(f"{HOOK_ENV}={spec!r} is not callable")
    return hook


class WebhookSender:
    """POSTs records from one background thread, so a slow receiver never holds a job thread.

    At most ``backlog`` records wait; past that they are dropped with a warning
    (they are still in the store). One attempt each, ``timeout`` seconds.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, backlog: int = 1000) -> None:
        self.url = url
        self.timeout = timeout
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=backlog)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, record: dict[str, Any]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="jobkit-dead-letter-webhook", daemon=True
                )
                self._thread.start()
        try:
            self._queue.put_nowait({k: v for k, v in record.items() if k not in PRIVATE_FIELDS})
        except queue.Full:
            logger.warning(
                "dead letters: webhook backlog full; not posting %s (it is kept)", record["id"]
            )

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued record was posted (or failed); for shutdown and tests."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while self._queue.unfinished_tasks and not deadline.is_set():
                deadline.wait(0.01)
        finally:
            timer.cancel()

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            try:
                request = urllib.request.Request(
                    self.url,
                    data=json.dumps(record, default=str).encode(),
                    headers={"Content-Type": "application/json", "User-Agent": "jobkit"},
                    method="POST",
                )
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
            except Exception as error:  # noqa: BLE001 - the record stays in the store
                logger.warning(
                    "dead letters: webhook %s failed for %s: %s",
                    mask_url(self.url),
                    record.get("id"),
                    error,
                )
            finally:
                self._queue.task_done()


class DeadLetters(JobkitMiddleware):
    """Describes each rejected message for the store, then runs the ``on_dead_letter`` hooks."""

    def __init__(
        self,
        on_dead_letter: Hook | None = None,
        *,
        traceback_chars: int = DEFAULT_TRACEBACK_CHARS,
        hook: str = "",
        webhook_url: str = "",
    ) -> None:
        """``hook`` (``JOBKIT_DEAD_LETTER_HOOK``) names a ``module:function`` called like
        ``on_dead_letter``; ``webhook_url`` (``JOBKIT_DEAD_LETTER_WEBHOOK``) gets each record."""
        self.traceback_chars = traceback_chars
        hooks: list[Hook] = []
        if on_dead_letter is not None:
            hooks.append(on_dead_letter)
        if hook:
            hooks.append(load_hook(hook))
        self.webhook = WebhookSender(webhook_url) if webhook_url else None
        if self.webhook is not None:
            hooks.append(self.webhook.send)
        self.hooks = hooks
        self.has_store = False

    def after_state_store(
        self, broker: Broker, client: redis.Redis | None, no_store_reason: str
    ) -> None:
        self.has_store = client is not None

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        if not self.has_store:
            logger.warning(
                "dead letters: no store (set JOBKIT_STATE_URL to a Redis URL); failed jobs go "
                "to the broker's <queue>.XQ without their reason, and jobkit dead-letters "
                "cannot list them"
            )

    def before_nack(self, broker: Broker, message: MessageProxy) -> None:
        # An attribute jobkit adds to the worker's MessageProxy, for the consumer's nack.
        message.dead_letter = describe_failure(  # type: ignore[attr-defined]
            broker, message, traceback_chars=self.traceback_chars
        )

    def after_dead_letter(self, broker: Broker, record: dict[str, Any]) -> None:
        """Called by the consumer once ``record`` is in the store."""
        for hook in self.hooks:
            try:
                hook(record)
            except Exception:
                logger.exception("dead letters: on_dead_letter hook %r failed", hook)


def dead_letter_of(broker: Broker, message: Message | MessageProxy) -> dict[str, Any]:
    """The record DeadLetters made for ``message`` (or one made now, if it is not installed)."""
    record = getattr(message, "dead_letter", None)
    return record if record is not None else describe_failure(broker, message)
