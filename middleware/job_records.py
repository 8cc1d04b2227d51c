"""A record of every job: its states in order, its attempts, result, progress; cancelling.

Each hook turns what happened into an :class:`~middleware.record_sink.Event` for
the record store (``brokers/job_record_store.py``, given by ``build_stack``):

- ``after_enqueue``: ``queued`` or ``delayed`` (a send or a replay), ``retrying``
  (with the failed attempt), ``deferred`` (RateLimits), ``queued`` again when due;
- ``after_receive`` (jobkit's consumers): the claim, answered while the job waits
  for a worker thread; ``before_process_message``: ``running``, unless the answer
  says the job was cancelled meanwhile or already finished (then it is skipped);
- ``after_ack``: ``succeeded`` (with the result if the actor has
  ``store_results=True``), ``cancelled`` or ``skipped``; ``after_nack``: ``failed``,
  pointing to its dead letter.

Cancelling a running job interrupts it at its next Python bytecode with
:class:`JobCancelled` (as Dramatiq's TimeLimit interrupts), or, for an actor
declared with ``cancel_mode="cooperative"``, makes :func:`cancel_requested` true.
Either way it ends ``cancelled`` and is not retried. Running jobs report
progress with :func:`report_progress`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
from typing import Any

import redis
from dramatiq import Broker, Message
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.middleware import SkipMessage
from dramatiq.threading import Interrupt

from . import outcomes
from .clipping import clip
from .dead_letters import MAX_MESSAGE_CHARS, dead_letter_of
from .deliveries import ATTEMPTS
from .dramatiq_seam import (
    FAILED_MESSAGE_LOG,
    RESULT_DISCARDED_LOG,
    SKIPPED_MESSAGE_LOG,
    WORKER_THREAD_LOGGER,
    clear_in_thread,
    raise_in_thread,
    unwrap,
)
from .hooks import JobkitMiddleware
from .rate_limits import DEFERRALS
from .record_sink import (
    ACTOR,
    ARGS,
    CANCELLED,
    CLAIM,
    CREATED,
    DEAD_LETTER,
    DEFERRAL,
    DEFERRED,
    DELAYED,
    DUE,
    END,
    ENQUEUED_AT,
    EVENT,
    FAILED,
    GROUP,
    KNOWN,
    LAST_ATTEMPT,
    NEW_ATTEMPT,
    PATCH,
    PRIORITY,
    PROGRESS,
    QUEUE,
    QUEUED,
    REASON,
    REPLAYED_AS,
    REPLAYED_FROM,
    RESULT,
    RESULT_ERROR,
    RETRY,
    RETRYING,
    RUNNING,
    SKIPPED,
    START,
    SUCCEEDED,
    UNIQUE_KEY,
    Event,
    PendingClaim,
    RecordSink,
    SinkFactory,
    once,
    ordinal,
)
from .redaction import Redactor
from .unique_jobs import UNIQUE

logger = logging.getLogger("jobkit.job_records")
HOST = socket.gethostname()
SEPARATORS = (",", ":")
#: A job skipped because it was cancelled, or had already finished (a redelivery).
CANCELLED_NOTE, FINISHED_NOTE = "cancelled", "finished"
COOPERATIVE = "cooperative"
#: Characters of a failed attempt's traceback kept (its end: where the error is).
TRACEBACK_CHARS = 2000
#: Least time between two progress writes of one job; the last report is always written.
PROGRESS_EVERY_S = 0.2


class JobCancelled(Interrupt):
    """Raised in a running job's thread when the job is cancelled (not retried)."""


class _QuietWorker(logging.Filter):
    """Drops Dramatiq's worker lines that say the wrong thing once records exist.

    "returned a value ... discarded" for actors whose results the record keeps; the
    ERROR with traceback for a cancelled job and "was skipped" for one skipped as
    cancelled or finished (``job.cancelled`` and an INFO line say what happened).
    """

    #: Actors declared with ``store_results=True``.
    keeping: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == FAILED_MESSAGE_LOG:
            return not (record.exc_info and isinstance(record.exc_info[1], JobCancelled))
        if record.msg == SKIPPED_MESSAGE_LOG and isinstance(record.args, tuple) and record.args:
            message_id = str(getattr(record.args[0], "message_id", ""))
            return outcomes.peek(message_id) not in (CANCELLED_NOTE, FINISHED_NOTE)
        if isinstance(record.msg, str) and RESULT_DISCARDED_LOG in record.msg:
            return not any(f"'{name}'" in record.msg for name in self.keeping)
        return True


_QUIET_WORKER = _QuietWorker()
logging.getLogger(WORKER_THREAD_LOGGER).addFilter(_QUIET_WORKER)


#: How long a job about to start waits for its claim's answer before it runs unclaimed.
CLAIM_TIMEOUT_S = 5.0
#: Attribute of a received message (a Dramatiq MessageProxy) holding its :class:`_Held`.
HELD = "_jobkit_held"
#: Jobs held here at most (received, not started); beyond, the oldest are forgotten
#: (a worker that stopped with messages in hand: they run elsewhere).
MAX_HELD = 10_000


class _Held:
    """A job received here and claimed, waiting for a worker thread."""

    __slots__ = ("claim", "cancelled")

    def __init__(self) -> None:
        self.claim: PendingClaim | None = None
        #: A cancel was announced while it waited: it does not start.
        self.cancelled = False


# Thread id -> the delivery running in it (shared by every JobRecords, read by the helpers).
_running: dict[int, dict[str, Any]] = {}
# Job id -> the claimed job waiting here for a worker thread.
_held: dict[str, _Held] = {}
_running_lock = threading.Lock()


def _watched_ids() -> list[str]:
    """The jobs a cancel announcement must reach here: running or held."""
    with _running_lock:
        return [delivery["message_id"] for delivery in _running.values()] + list(_held)


def cancel_requested() -> bool:
    """True once the job running in this thread was cancelled (``cancel_mode="cooperative"``)."""
    delivery = _running.get(threading.get_ident())
    return bool(delivery and delivery.get("cancel"))


def report_progress(fraction: float, message: str = "") -> None:
    """Record how far the job running in this thread is (0.0 to 1.0), shown while it runs."""
    delivery = _running.get(threading.get_ident())
    if delivery is None:
        return  # not in a job, or records are off
    fraction = min(max(float(fraction), 0.0), 1.0)
    now = time.monotonic()
    delivery["progress"] = json.dumps(
        {"fraction": round(fraction, 4), "message": clip(str(message), 200), "at": _now_ms()}
    )
    if now - delivery.get("progress_written", 0.0) >= PROGRESS_EVERY_S:
        delivery["progress_written"] = now
        delivery["sink"].put(_patch(delivery, {PROGRESS: delivery.pop("progress")}))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _patch(delivery: dict[str, Any], fields: dict[str, str]) -> Event:
    return Event(PATCH, delivery["message_id"], delivery["actor"], delivery["queue"], 0, "", 0,
                 fields=fields)  # fmt: skip


class JobRecords(JobkitMiddleware):
    """Writes each job's record through the store ``build_stack`` gives it."""

    @property
    def actor_options(self) -> set[str]:
        return {"store_results", "cancel_mode"}

    def __init__(
        self,
        store_factory: SinkFactory,
        *,
        ttl_ms: int,
        result_max_bytes: int,
        redactor: Redactor | None = None,
        on: bool = True,
    ) -> None:
        self.store_factory = store_factory
        self.ttl_ms = ttl_ms
        self.result_max_bytes = result_max_bytes
        self.redactor = redactor or Redactor()
        self.on = on
        self.sink: RecordSink | None = None
        self.no_store_reason = "job records are off (JOBKIT_JOB_RECORDS=0)"

    def after_declare_actor(self, broker: Broker, actor: Any) -> None:
        if actor.options.get("store_results"):
            _QUIET_WORKER.keeping.add(actor.actor_name)

    def after_state_store(
        self, broker: Broker, client: redis.Redis | None, no_store_reason: str
    ) -> None:
        if self.on and client is not None:
            self.sink = self.store_factory(client, ttl_ms=self.ttl_ms)
        elif self.on:
            self.no_store_reason = no_store_reason

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        if self.sink is not None:
            self.sink.watch_cancels(self._on_cancel, _watched_ids)
        elif self.on:
            logger.warning("job records: none are kept: %s", self.no_store_reason)

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        if self.sink is not None:
            self.sink.stop_watching()
            self.sink.flush(5.0)

    # -- sending -------------------------------------------------------------------

    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        options = message.options
        if "pipe_target" in options and "job_group" not in options:
            # A pipeline's first message: its jobs are listed together under its id.
            options["job_group"] = message.message_id
            target = options["pipe_target"]
            while target:
                target["options"]["job_group"] = message.message_id
                target = target["options"].get("pipe_target")

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        sink = self.sink
        if sink is None:
            return
        kind = outcomes.enqueue_kind(message, delay)
        options = message.options
        retries = int(options.get("retries", 0))
        deferrals = int(options.get(DEFERRALS, 0))
        now = _now_ms()
        due = str(now + delay) if delay else ""
        queue = q_name(message.queue_name)
        at = message.message_id, message.actor_name, queue
        if kind == outcomes.RETRY:
            delivery = _running.get(threading.get_ident())
            fields = {}
            if delivery is not None and delivery["message_id"] == message.message_id:
                fields = self._attempt_fields(delivery)
                delivery["written"] = True
            step = ordinal(retries, deferrals, RETRY)
            event = Event(EVENT, *at, step, RETRYING, now, due, fields)
        elif kind == outcomes.DEFERRAL:
            step = ordinal(retries + 1, deferrals - 1, DEFERRAL)
            event = Event(EVENT, *at, step, DEFERRED, now, due)
        elif kind == outcomes.DUE:
            event = Event(EVENT, *at, ordinal(retries + 1, deferrals, DUE), QUEUED, now)
        else:
            step = ordinal(retries + 1, deferrals, CREATED)
            fields = self._identity(broker, message, now)
            event = Event(EVENT, *at, step, DELAYED if delay else QUEUED, now, due, fields)
            replayed_from = options.get("replayed_from")
            if replayed_from:
                fields[once(REPLAYED_FROM)] = str(replayed_from)
                link = {REPLAYED_AS: message.message_id}
                sink.put(Event(PATCH, str(replayed_from), *at[1:], 0, "", now, fields=link))
        sink.put(event)

    def _identity(self, broker: Broker, message: Message, now: int) -> dict[str, str]:
        """The fields that say what the job is, set by whichever event arrives first."""
        options = message.options
        fields = {
            once(ACTOR): message.actor_name,
            once(QUEUE): q_name(message.queue_name),
            once(ENQUEUED_AT): str(options.get("enqueued_at") or message.message_timestamp or now),
        }
        priority = options.get("priority", "normal")
        if priority != "normal":  # the store reads "normal" when it is left out
            fields[once(PRIORITY)] = str(priority)
        if message.args or message.kwargs:
            actor = broker.actors.get(message.actor_name)
            arguments = self.redactor.arguments(
                actor.fn if actor else None, tuple(message.args), dict(message.kwargs)
            )
            fields[once(ARGS)] = json.dumps(arguments, default=str)
        group = options.get("job_group") or (options.get("group_info") or {}).get("group_id")
        if group:
            fields[once(GROUP)] = str(group)
        unique = options.get(UNIQUE)
        if unique is not None:  # also lets a cancel free the key (lua/job_records.lua)
            fields[once(UNIQUE_KEY)] = str(unique)
        return fields

    # -- running -------------------------------------------------------------------

    def after_receive(self, broker: Broker, message: MessageProxy) -> None:
        if self.sink is None or "eta" in message.options:
            return  # a delayed message is claimed when it is due (back on its queue)
        inner = unwrap(message)
        if q_name(inner.queue_name) == inner.queue_name:
            setattr(message, HELD, self._claim(self.sink, inner))

    def _claim(self, sink: RecordSink, message: Message) -> _Held:
        """Claim the job for this worker; cancels announced from now on are caught."""
        options = message.options
        step = ordinal(int(options.get("retries", 0)) + 1, int(options.get(DEFERRALS, 0)), START)
        event = Event(CLAIM, message.message_id, message.actor_name,
                      q_name(message.queue_name), step, "", _now_ms())  # fmt: skip
        with _running_lock:  # held before the claim is sent: no announcement is missed
            if len(_held) >= MAX_HELD:
                del _held[next(iter(_held))]
            held = _held[message.message_id] = _Held()
        held.claim = sink.claim(event)
        return held

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        sink = self.sink
        if sink is None:
            return
        inner = unwrap(message)
        # Claimed when received (jobkit's consumers), else now (another broker's).
        held: _Held = getattr(message, HELD, None) or self._claim(sink, inner)
        assert held.claim is not None
        reply = held.claim.wait(CLAIM_TIMEOUT_S)
        options = inner.options
        number = int(options.get("retries", 0)) + 1
        deferrals = int(options.get(DEFERRALS, 0))
        base = ordinal(number, deferrals, 0)
        queue = q_name(inner.queue_name)
        actor = broker.actors.get(inner.actor_name)
        cooperative = bool(actor and actor.options.get("cancel_mode") == COOPERATIVE)
        attempt = ATTEMPTS.get(message)
        started = attempt.started_at if attempt is not None else time.time()
        start_ms = int(started * 1000)
        delivery = {
            "message_id": inner.message_id,
            "actor": inner.actor_name,
            "queue": queue,
            "base": base,
            "start_ms": start_ms,
            "started": started,
            "sink": sink,
            "cooperative": cooperative,
            "store_results": bool(actor and actor.options.get("store_results")),
        }
        with _running_lock:
            if _held.get(inner.message_id) is held:
                del _held[inner.message_id]
            if held.cancelled and not isinstance(reply, str):
                reply = CANCELLED  # cancelled since its claim: it never starts
                sink.put(Event(EVENT, inner.message_id, inner.actor_name, queue, base + START,
                               CANCELLED, _now_ms(), "before it ran"))  # fmt: skip
            if not isinstance(reply, str):
                _running[threading.get_ident()] = delivery
        if isinstance(reply, str):
            note = CANCELLED_NOTE if reply == CANCELLED else FINISHED_NOTE
            outcomes.note(inner.message_id, note)
            logger.info(
                "job %s %s not run: it %s", inner.actor_name, inner.message_id,
                "was cancelled" if note == CANCELLED_NOTE else f"already ended ({reply[5:]})",
            )  # fmt: skip
            raise SkipMessage(reply)
        # What the job is goes with its start only if its send did not say (or is late).
        fields = self._identity(broker, inner, start_ms) if reply != KNOWN else {}
        fields[NEW_ATTEMPT] = json.dumps(
            {"s": start_ms, "w": f"{HOST}:{os.getpid()}"}, separators=SEPARATORS
        )
        sink.put(Event(EVENT, inner.message_id, inner.actor_name, queue, base + START, RUNNING,
                       start_ms, "", fields))  # fmt: skip

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        thread = threading.get_ident()
        with _running_lock:  # no cancel reaches this job from here on: it ended as it ended
            delivery = _running.get(thread)
            if delivery is None or delivery["message_id"] != message.message_id:
                return
            delivery["interruptible"] = False
            if delivery.get("cancel") and not delivery["cooperative"]:
                clear_in_thread(thread)  # an interrupt that came as the job returned
            cancelled = isinstance(exception, JobCancelled) or bool(delivery.get("cancel"))
            # What cancel_requested() says from here on (Retries, JobLogging): how it ended.
            delivery["cancel"] = cancelled
        end = time.time()
        # Short keys (every record repeats them): start, end, duration ms, where, outcome.
        attempt: dict[str, Any] = {
            "s": delivery["start_ms"],
            "e": int(end * 1000),
            "d": round((end - delivery["started"]) * 1000, 2),
            "w": f"{HOST}:{os.getpid()}",
            "o": CANCELLED if cancelled else FAILED if exception is not None else SUCCEEDED,
        }
        if exception is not None and not cancelled:
            attempt["et"] = type(exception).__name__
            attempt["em"] = clip(str(self.redactor.value(str(exception))), MAX_MESSAGE_CHARS)
            formatted = "".join(traceback.format_exception(exception))
            attempt["tb"] = formatted[-TRACEBACK_CHARS:]
        delivery["attempt_json"] = json.dumps(attempt, separators=SEPARATORS)
        delivery["cancelled"] = cancelled
        delivery["exception"] = exception
        if exception is None and not cancelled and delivery["store_results"]:
            delivery["result"] = self._result_fields(result)

    def _result_fields(self, result: Any) -> dict[str, str]:
        try:
            encoded = json.dumps(result)
        except (TypeError, ValueError) as error:
            return {RESULT_ERROR: f"the result is not JSON ({error}); not kept"}
        if len(encoded.encode()) > self.result_max_bytes:
            return {
                RESULT_ERROR: f"the result is {len(encoded.encode())} bytes, over "
                f"JOBKIT_JOB_RESULT_MAX_BYTES={self.result_max_bytes}; not kept"
            }
        return {RESULT: encoded}

    def _attempt_fields(self, delivery: dict[str, Any]) -> dict[str, str]:
        # The latest attempt: its start went through this process's writer, just before.
        fields = {LAST_ATTEMPT: delivery["attempt_json"]}
        progress = delivery.get("progress")
        if progress:
            fields[PROGRESS] = progress
        return fields

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        if self.sink is not None:
            self._end(message, None)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        if self.sink is not None:
            self._end(message, dead_letter_of(broker, message))

    def _end(self, message: MessageProxy, dead_letter: dict[str, Any] | None) -> None:
        with _running_lock:
            delivery = _running.get(threading.get_ident())
            if delivery is not None and delivery["message_id"] == message.message_id:
                del _running[threading.get_ident()]
            else:
                delivery = None
        sink = self.sink
        assert sink is not None
        inner = unwrap(message)
        queue = q_name(inner.queue_name)
        if delivery is None:  # it did not run: skipped before its claim, or not claimed
            if q_name(inner.queue_name) != inner.queue_name and dead_letter is None:
                return  # a delayed message taken off its delay queue: it is due, not done
            noted = outcomes.peek(inner.message_id)
            if dead_letter is None and noted in (outcomes.DEFERRED, CANCELLED_NOTE, FINISHED_NOTE):
                return
            number = int(inner.options.get("retries", 0)) + 1
            step = ordinal(number, int(inner.options.get(DEFERRALS, 0)), END)
            state, fields = (FAILED, self._failure_fields(dead_letter)) if dead_letter else (
                SKIPPED, {})  # fmt: skip
            sink.put(Event(EVENT, inner.message_id, inner.actor_name, queue, step, state,
                           _now_ms(), fields.get(REASON, ""), fields))  # fmt: skip
            return
        if delivery.get("written") and dead_letter is None:
            return  # retrying: the attempt went with the retry
        fields = self._attempt_fields(delivery)
        if dead_letter is not None:
            state = FAILED
            fields.update(self._failure_fields(dead_letter))
        elif delivery.get("cancelled"):
            state = CANCELLED
        elif delivery.get("exception") is None:
            state = SUCCEEDED
            fields.update(delivery.get("result") or {})
        else:
            state = FAILED  # an exception, acked without a retry: not dead-lettered
        sink.put(Event(EVENT, delivery["message_id"], delivery["actor"], queue,
                       delivery["base"] + END, state, _now_ms(), fields.get(REASON, ""),
                       fields))  # fmt: skip

    @staticmethod
    def _failure_fields(dead_letter: dict[str, Any]) -> dict[str, str]:
        return {DEAD_LETTER: str(dead_letter["id"]), REASON: str(dead_letter["reason"])}

    # -- cancelling ----------------------------------------------------------------

    def _on_cancel(self, job_id: str) -> None:
        """A running or held job was cancelled: interrupt it here, or tell it (cooperative)."""
        with _running_lock:
            for thread, delivery in _running.items():
                if delivery["message_id"] != job_id:
                    continue
                # A job that has returned ends as it ended (after_process_message).
                if not delivery.get("cancel") and delivery.get("interruptible", True):
                    delivery["cancel"] = True
                    if not delivery["cooperative"]:
                        raise_in_thread(thread, JobCancelled)
            held = _held.get(job_id)
            if held is not None:  # received here, not started: it never will
                held.cancelled = True
