"""Unique jobs: a second send of a job whose key is pending returns the first job's id.

Actor options::

    @dramatiq.actor(unique_key="report_id", unique_for="1h")
    def build_report(report_id: int) -> None: ...

- ``unique_key``: an argument name, a tuple of names, or a callable taking the
  job's arguments as the actor does (``*args, **kwargs``) and returning a str.
  Two jobs of one actor with the same key are the same job.
- ``unique_for`` (required with ``unique_key``): the longest a key is held, in
  ms or as a duration (``"90s"``, ``"15m"``, ``"1h"``); from the send, plus
  the delay of a delayed send. It bounds how long a lost release (a crash, the
  state store down) can hold a key.
- ``unique_until``: ``"finish"`` (default): the key is free once the job
  succeeded, failed for good (dead-lettered) or was cancelled; ``"start"``:
  once it starts running. A job waiting for its retry still holds it.

The key is taken at send, in the state Redis, with one atomic script: it
holds the first job's id at ``jobkit:unique:<actor>:<key>``. A send that finds
it held by another job raises :class:`Duplicate` in ``before_enqueue``; jobkit's
brokers catch it, put nothing on the queue, run no ``after_enqueue`` and return
a message with the pending job's id (``options["deduplicated"]`` true). A key is
released only by the job holding it (compare and delete), so a late release
never frees a newer job's key. Retries, rate-limit deferrals and delayed jobs
coming due re-enqueue the same job: they neither take the key again nor meet it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
import structlog
from dramatiq import Broker, Message, Worker
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.middleware import MiddlewareError

from jobkit.errors import JobkitError
from jobkit.settings import DURATION_ACCEPTED, parse_duration_ms

from . import outcomes
from .deliveries import CurrentDelivery
from .hooks import UsesStateRedis

logger = structlog.get_logger("jobkit.unique_jobs")

KEY_PREFIX = "jobkit:unique"
#: The message option carrying the job's key (its value, as the record shows it).
UNIQUE = "unique"
#: Set on the message a deduplicated send returns.
DEDUPLICATED = "deduplicated"
START, FINISH = "start", "finish"
#: Key values longer than this are shortened to a prefix and a digest.
MAX_KEY_CHARS = 200

# Returns the id holding the key, or nil once the key holds ARGV[1].
ACQUIRE = """
local holder = redis.call("GET", KEYS[1])
if holder then
    return holder
end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return false
"""

RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"""


class UniqueJobsConfigError(JobkitError, MiddlewareError, ValueError):
    """An actor's unique options are invalid, its key cannot be computed, or no store exists."""


class Duplicate(JobkitError, MiddlewareError):
    """The job sent duplicates a pending one; jobkit's brokers return :meth:`pending` instead.

    A ``MiddlewareError``, so it leaves ``before_enqueue``; a broker that does
    not know it (Dramatiq's own) lets it reach the caller.
    """

    def __init__(self, message: Message, pending_id: str, key: str) -> None:
        super().__init__(
            f"job {message.message_id} of {message.actor_name} was not sent: job {pending_id} "
            f"with the same unique key ({key}) is pending"
        )
        self.message = message
        self.pending_id = pending_id

    def pending(self) -> Message:
        """The message as sent, carrying the pending job's id."""
        return self.message.copy(message_id=self.pending_id, options={DEDUPLICATED: True})


@dataclass(frozen=True)
class UniqueSpec:
    """An actor's unique options, checked once at declaration."""

    actor_name: str
    key_of: Callable[[tuple, dict], str]
    window_ms: int
    until: str

    def key(self, message: Message) -> str:
        """The job's key value (what its record shows)."""
        try:
            value = self.key_of(tuple(message.args), dict(message.kwargs))
        except Exception as error:  # noqa: BLE001 - any failure: the send fails, said in one line
            raise UniqueJobsConfigError(
                f"actor {self.actor_name!r}: its unique_key raised {type(error).__name__}: "
                f"{error}; the job was not sent"
            ) from error
        if not isinstance(value, str):
            raise UniqueJobsConfigError(
                f"actor {self.actor_name!r}: its unique_key returned {type(value).__name__} "
                f"{value!r}, not a str; the job was not sent"
            )
        if len(value) > MAX_KEY_CHARS:  # a digest, not a cut: two long keys stay distinct
            digest = hashlib.sha256(value.encode()).hexdigest()[:32]
            value = f"{value[: MAX_KEY_CHARS - 40]}…#{digest}"
        return value


def _error(actor: Any, text: str) -> UniqueJobsConfigError:
    return UniqueJobsConfigError(f"actor {actor.actor_name!r}: {text}")


def _window_ms(actor: Any, window: Any) -> int:
    if isinstance(window, timedelta):
        ms = int(window.total_seconds() * 1000)
    elif isinstance(window, int) and not isinstance(window, bool):
        ms = window
    elif isinstance(window, str):
        try:
            ms = parse_duration_ms(window)
        except ValueError:
            raise _error(actor, f"unique_for={window!r} is {DURATION_ACCEPTED}") from None
    else:
        raise _error(
            actor, f"unique_for={window!r} must be ms (an int), a duration such as '15m', "
            "or a timedelta",
        )  # fmt: skip
    if ms <= 0:
        raise _error(actor, f"unique_for={window!r} must be longer than 0")
    return ms


def _argument_key(actor: Any, names: tuple[str, ...]) -> Callable[[tuple, dict], str]:
    signature = inspect.signature(actor.fn)
    named = [
        name
        for name, parameter in signature.parameters.items()
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
    for name in names:
        if name not in named:
            raise _error(
                actor, f"unique_key={name!r} is not one of its arguments "
                f"({', '.join(named) or 'none'})",
            )  # fmt: skip

    def key(args: tuple, kwargs: dict) -> str:
        bound = signature.bind_partial(*args, **kwargs)
        bound.apply_defaults()
        return ",".join(f"{name}={_text(bound.arguments.get(name))}" for name in names)

    return key


def _text(value: Any) -> str:
    # Sorted JSON, so equal values give equal keys in every process.
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def unique_of(actor: Any) -> UniqueSpec | None:
    """An actor's validated unique options, or ``None`` if it declares none."""
    options = actor.options
    key = options.get("unique_key")
    if key is None:
        for name in ("unique_for", "unique_until"):
            if options.get(name) is not None:
                raise _error(actor, f"{name} needs unique_key (what makes two jobs the same)")
        return None
    key_of: Callable[[tuple, dict], str]
    if callable(key):
        function = key

        def call(args: tuple, kwargs: dict) -> str:
            return function(*args, **kwargs)

        key_of = call
    elif isinstance(key, str):
        key_of = _argument_key(actor, (key,))
    elif isinstance(key, tuple | list) and key and all(isinstance(name, str) for name in key):
        if len(set(key)) != len(key):
            raise _error(actor, f"unique_key={key!r} names an argument twice")
        key_of = _argument_key(actor, tuple(key))
    else:
        raise _error(
            actor, f"unique_key={key!r} must be an argument name, a tuple of names, or a "
            "callable taking the job's arguments and returning a str",
        )  # fmt: skip
    if options.get("unique_for") is None:
        raise _error(
            actor, "unique_key needs unique_for, the longest a key is held (e.g. "
            "unique_for='1h'), so a key whose release is lost does not block sends forever",
        )  # fmt: skip
    until = options.get("unique_until", FINISH)
    if until not in (START, FINISH):
        raise _error(actor, f"unique_until={until!r} must be 'finish' (default) or 'start'")
    return UniqueSpec(actor.actor_name, key_of, _window_ms(actor, options["unique_for"]), until)


class UniqueJobs(UsesStateRedis):
    """Takes a unique job's key at send; releases it when the job starts or ends."""

    def __init__(self) -> None:
        self._specs: dict[str, UniqueSpec] = {}
        #: Message id -> key taken by a send of this process not yet enqueued.
        self._taken: dict[str, str] = {}
        #: The delivery this worker thread re-enqueued (a retry, a deferral) or released.
        self._delivery = CurrentDelivery()
        self._acquire: Any = None
        self._release_script: Any = None
        self._down = False
        self._down_lock = threading.Lock()

    @property
    def actor_options(self) -> set[str]:
        return {"unique_key", "unique_for", "unique_until"}

    def after_state_store(
        self, broker: Broker, client: redis.Redis | None, no_store_reason: str
    ) -> None:
        super().after_state_store(broker, client, no_store_reason)
        if client is not None:
            self._acquire = client.register_script(ACQUIRE)
            self._release_script = client.register_script(RELEASE)

    def before_declare_actor(self, broker: Broker, actor: Any) -> None:
        spec = unique_of(actor)
        if spec is not None:
            self._specs[actor.actor_name] = spec
        else:
            self._specs.pop(actor.actor_name, None)

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        if self._specs and self.client is None:
            logger.warning(
                "unique_jobs.off",
                actors=sorted(self._specs),
                why=self.no_store_reason,
                risk="their keys are freed only when unique_for ends",
            )

    # -- sending -------------------------------------------------------------------

    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        spec = self._specs.get(message.actor_name)
        if spec is None:
            return
        if outcomes.enqueue_kind(message, delay) not in (outcomes.SENT, outcomes.REPLAY):
            return  # the same job again (a retry, a deferral, due): it holds its key
        if self.client is None:
            raise UniqueJobsConfigError(
                f"actor {message.actor_name!r} declares unique_key but {self.no_store_reason}"
            )
        value = spec.key(message)
        message.options[UNIQUE] = value
        key = f"{KEY_PREFIX}:{message.actor_name}:{value}"
        try:
            holder = self._acquire(
                keys=[key], args=[message.message_id, spec.window_ms + (delay or 0)]
            )
        except redis.RedisError as error:
            self._store_down(error)
            return  # best effort: a duplicate is better than a lost job
        self._store_up()
        if holder is None or holder.decode() == message.message_id:
            self._taken[message.message_id] = key
            return
        pending_id = holder.decode()
        logger.info(
            "job.deduplicated",
            message_id=pending_id,
            duplicate_id=message.message_id,
            actor=message.actor_name,
            unique_key=value,
        )
        raise Duplicate(message, pending_id, value)

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        if UNIQUE not in message.options:
            return
        if self._taken:
            self._taken.pop(message.message_id, None)
        if outcomes.enqueue_kind(message, delay) in (outcomes.RETRY, outcomes.DEFERRAL):
            # Its ack ends this delivery, not the job: keep the key.
            self._delivery.start(message, requeued=True)

    def after_enqueue_failed(self, broker: Broker, message: Message, delay: int | None) -> None:
        key = self._taken.pop(message.message_id, None) if self._taken else None
        if key is not None:
            self._release(key, message.message_id)

    # -- running -------------------------------------------------------------------

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        spec = self._specs.get(message.actor_name)
        if spec is not None and spec.until == START and UNIQUE in message.options:
            self._delivery.start(message, released=True)
            self._release(_key_of(message), message.message_id)

    def before_ack(self, broker: Broker, message: MessageProxy) -> None:
        if UNIQUE not in message.options:
            return
        if q_name(message.queue_name) != message.queue_name:
            return  # a delayed message moved to its queue: due, not done
        state = self._delivery.end(message)
        if state is not None and (state.get("requeued") or state.get("released")):
            return
        self._release(_key_of(message), message.message_id)

    def before_nack(self, broker: Broker, message: MessageProxy) -> None:
        if UNIQUE in message.options:
            state = self._delivery.end(message)
            if state is None or not state.get("released"):
                self._release(_key_of(message), message.message_id)

    # -- the store -----------------------------------------------------------------

    def _release(self, key: str, job_id: str) -> None:
        if self._release_script is None:
            return
        try:
            self._release_script(keys=[key], args=[job_id])
        except redis.RedisError as error:
            self._store_down(error)
        else:
            self._store_up()

    def _store_down(self, error: redis.RedisError) -> None:
        # One WARNING per outage, not one per job.
        with self._down_lock:
            if self._down:
                return
            self._down = True
        logger.warning(
            "unique_jobs.store_down",
            error=f"{type(error).__name__}: {error}",
            effect="unique jobs are sent without deduplication, and keys held are freed "
            "when their unique_for ends, until the state store answers again",
        )

    def _store_up(self) -> None:
        if self._down:
            with self._down_lock:
                if not self._down:
                    return
                self._down = False
            logger.warning("unique_jobs.store_back", effect="unique jobs are deduplicated again")


def _key_of(message: Message | MessageProxy) -> str:
    return f"{KEY_PREFIX}:{message.actor_name}:{message.options[UNIQUE]}"
