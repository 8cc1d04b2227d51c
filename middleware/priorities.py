"""Job priorities: named levels per actor and per message, honoured by broker and worker.

Levels, most urgent first: ``critical``, ``high``, ``normal`` (default), ``low``.
Set an actor's default with ``@dramatiq.actor(priority="high")`` and override it per
message with ``actor.send_with_options(priority="critical")``. The level travels in
``message.options["priority"]``; the broker reads it to pick the priority queue (see
``brokers/``), and this middleware orders the messages a worker has already
fetched so that a more urgent one runs first.

An actor's ``priority`` may also be an int, Dramatiq's own meaning (lower runs
sooner among fetched messages of the same level); such an actor's level is
``normal``.

Dramatiq's per-message ``broker_priority`` (an AMQP priority, higher sooner) is
taken as a level's number (:data:`LEVEL_NUMBERS`), on every broker: jobkit has
no priorities between or beyond its levels, so any other number is refused.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from queue import Empty, PriorityQueue
from typing import Any, Literal

from dramatiq import Broker, Message, Middleware, Worker
from dramatiq.middleware import MiddlewareError

from jobkit.errors import JobkitError
from jobkit.settings import DEFAULT_WEIGHTS as SETTINGS_WEIGHTS
from jobkit.settings import LEVELS as SETTINGS_LEVELS
from jobkit.settings import Settings

from .dramatiq_seam import queued_message, unwrap, use_work_queue

#: Levels, most urgent first.
LEVELS: tuple[str, ...] = SETTINGS_LEVELS
DEFAULT_LEVEL = "normal"
#: A level's number: higher runs sooner (it is also the AMQP message priority).
LEVEL_NUMBERS: dict[str, int] = {"critical": 3, "high": 2, "normal": 1, "low": 0}
#: The level of each number, for a message sent with Dramatiq's ``broker_priority``.
LEVEL_OF_NUMBER: dict[int, str] = {number: level for level, number in LEVEL_NUMBERS.items()}
#: Rank inside the worker: lower runs sooner.
LEVEL_RANKS: dict[str, int] = {level: rank for rank, level in enumerate(LEVELS)}

DEFAULT_WEIGHTS: dict[str, int] = dict(SETTINGS_WEIGHTS)

PriorityMode = Literal["strict", "weighted"]


class InvalidPriority(JobkitError, MiddlewareError, ValueError):
    """A priority that is not one of :data:`LEVELS`.

    A ``MiddlewareError`` so that Dramatiq lets it reach the caller of ``send()``
    instead of logging and swallowing it.
    """


def parse_level(value: Any, *, where: str = "priority") -> str:
    """The level name for ``value`` (a level name, any case); :class:`InvalidPriority` if none."""
    if isinstance(value, str) and value.strip().lower() in LEVEL_RANKS:
        return value.strip().lower()
    raise InvalidPriority(
        f"invalid {where} {value!r}: use one of {', '.join(LEVELS)} "
        f"(most urgent first; default {DEFAULT_LEVEL})"
    )


def level_of_broker_priority(value: Any) -> str:
    """The level whose number is ``value``; :class:`InvalidPriority` for any other value."""
    # bool is an int, but True is no more a priority than "1" is.
    if isinstance(value, int) and not isinstance(value, bool) and value in LEVEL_OF_NUMBER:
        return LEVEL_OF_NUMBER[value]
    numbers = ", ".join(f"{number} {level}" for level, number in LEVEL_NUMBERS.items())
    raise InvalidPriority(
        f"invalid broker_priority {value!r}: jobkit has one AMQP priority per level "
        f"({numbers}; queues are declared with x-max-priority={max(LEVEL_NUMBERS.values())}), "
        "so use one of those numbers or a level name, e.g. priority='high'"
    )


def actor_level(actor_priority: Any) -> str:
    """An actor's default level: its ``priority`` if that is a level name, else ``normal``."""
    if isinstance(actor_priority, str):
        return parse_level(actor_priority, where="actor priority")
    return DEFAULT_LEVEL


@dataclass(frozen=True)
class PriorityConfig:
    """How brokers pick among levels (``JOBKIT_PRIORITY_MODE``, ``JOBKIT_PRIORITY_WEIGHTS``).

    ``strict``: always the most urgent non-empty level. ``weighted``: each fetched
    message comes from a non-empty level chosen at random in proportion to its weight,
    so lower levels keep a share under constant urgent load.
    """

    mode: PriorityMode = "strict"
    weights: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    @classmethod
    def from_settings(cls, settings: Settings) -> PriorityConfig:
        """``JOBKIT_PRIORITY_MODE`` and ``JOBKIT_PRIORITY_WEIGHTS``, checked by the settings."""
        return cls(mode=settings.priority_mode, weights=dict(settings.priority_weights))

    def share(self, level: str, busy: tuple[str, ...]) -> float:
        """Expected share of fetches for ``level`` while exactly the ``busy`` levels have jobs."""
        if self.mode == "strict":
            return 1.0 if level == next(lvl for lvl in LEVELS if lvl in busy) else 0.0
        return self.weights[level] / sum(self.weights[lvl] for lvl in busy)


class Priorities(Middleware):
    """Validates and stamps each message's level, and orders fetched messages by it."""

    def __init__(self, config: PriorityConfig | None = None) -> None:
        self.config = config or PriorityConfig()

    def before_declare_actor(self, broker: Broker, actor: Any) -> None:
        actor_level(actor.priority)  # fail at declaration, not at the first send

    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        explicit = message.options.get("priority")
        default = self._default_level(broker, message.actor_name)
        level = parse_level(explicit) if explicit is not None else None
        number = message.options.get("broker_priority")
        if number is not None:
            # The broker orders by the number, the worker by the level: they must agree.
            numbered = level_of_broker_priority(number)
            if level is not None and level != numbered:
                raise InvalidPriority(
                    f"priority={level!r} and broker_priority={number!r} (level {numbered!r}) "
                    f"disagree: pass only one, e.g. priority={level!r}"
                )
            level = numbered
        if level is None:
            level = default
        # normal is left out unless given, or needed to override the actor's default.
        if explicit is not None or level != DEFAULT_LEVEL or default != DEFAULT_LEVEL:
            message.options["priority"] = level

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        # Consumers and worker threads are created after this hook and take
        # worker.work_queue, so every fetched message goes through this queue.
        use_work_queue(worker, LevelOrderedWorkQueue(broker, strict=self.config.mode == "strict"))

    @staticmethod
    def _default_level(broker: Broker, actor_name: str) -> str:
        actor = broker.actors.get(actor_name)
        return actor_level(actor.priority) if actor is not None else DEFAULT_LEVEL


def message_level(broker: Broker, message: Message) -> str:
    """The level a fetched message runs at (its own, else its actor's, else normal)."""
    level = message.options.get("priority")
    if isinstance(level, str) and level in LEVEL_RANKS:
        return level
    return Priorities._default_level(broker, message.actor_name)


class LevelOrderedWorkQueue(PriorityQueue):
    """The worker's in-memory queue of fetched messages, ordered by level.

    Strict mode: (level rank, actor int priority, arrival). Weighted mode: the
    broker has already weighted the fetch, so (actor int priority, arrival), as
    in plain Dramatiq; ordering by level here would starve the low-level
    messages the weighted fetch handed out.
    """

    def __init__(self, broker: Broker, *, strict: bool) -> None:
        super().__init__()
        self.broker = broker
        self.strict = strict
        self.arrivals = itertools.count()
        self.paused = False

    def pause(self) -> None:
        """Stop handing jobs to worker threads (see load_throttle); fetched jobs stay here,
        so a shutdown still gives them back to the broker."""
        with self.mutex:
            self.paused = True

    def resume(self) -> None:
        with self.not_empty:
            self.paused = False
            self.not_empty.notify_all()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:  # Worker.stop drains the queue this way, paused or not
            return super().get(False)
        # Queue.get, plus: while paused, wait as if empty.
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.not_empty:
            while self.paused or not self._qsize():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Empty
                self.not_empty.wait(remaining)
            item = self._get()
            self.not_full.notify()
            return item

    def _put(self, item: Any) -> None:
        message = unwrap(queued_message(item))
        actor = self.broker.actors.get(message.actor_name)
        tie = actor.priority if actor is not None and isinstance(actor.priority, int) else 0
        if self.strict:
            level = message.options.get("priority")
            if level not in LEVEL_RANKS:
                level = actor_level(actor.priority) if actor is not None else DEFAULT_LEVEL
            key: tuple[int, ...] = (LEVEL_RANKS[level], tie, next(self.arrivals))
        else:
            key = (tie, next(self.arrivals))
        # The item itself is kept as is (Worker.stop hands item.message back).
        heapq.heappush(self.queue, (key, item))

    def _get(self) -> Any:
        return heapq.heappop(self.queue)[1]
