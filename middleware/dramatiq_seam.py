"""Every use jobkit makes of Dramatiq's private parts, in one place.

jobkit extends Dramatiq where Dramatiq has no public way in: its consumers and
brokers (the private ``_RabbitmqConsumer``, ``_RedisConsumer`` and the methods a
subclass overrides), the worker's in-memory queue, the exception a worker stuffs
into a message, the CLI's logging set-up and command line, the names of its
loggers. Nothing else in the product touches them (``tests/test_seams.py``
checks both that and that each one still exists), so a Dramatiq upgrade is a
change here and a run of that test.

Version: exact. ``pyproject.toml`` pins ``dramatiq==2.2.1`` because
``brokers/lua/dispatch.lua`` is that release's script, so any other version is
untested by definition; :func:`check_version` refuses it.

Subclasses of the private consumers also rely on attributes their bases set
(listed in each base's docstring); the test builds each base and checks them.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import operator
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from queue import PriorityQueue
from typing import Any, NoReturn, cast

from dramatiq import Message, Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import (
    MAX_ENQUEUE_ATTEMPTS,
    RabbitmqBroker,
    _RabbitmqConsumer,
    _RabbitmqMessage,
)
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis, dq_name
from dramatiq.compat import StreamablePipe
from dramatiq.threading import raise_thread_exception

__all__ = [
    "CONSUMER_THREAD_LOGGER",
    "MAX_ENQUEUE_ATTEMPTS",
    "RETRIES_LOGGER",
    "FAILED_MESSAGE_LOG",
    "RESULT_DISCARDED_LOG",
    "SKIPPED_MESSAGE_LOG",
    "TESTED",
    "WORKER_THREAD_LOGGER",
    "RabbitmqBrokerBase",
    "RabbitmqConsumerBase",
    "RabbitmqDelivery",
    "RedisBrokerBase",
    "RedisConsumerBase",
    "check_version",
    "clear_in_thread",
    "cli_app",
    "delivery_tag",
    "is_cli_pipe",
    "pipeline_command",
    "queued_message",
    "raise_in_thread",
    "redeclare_later",
    "redis_command",
    "script_command",
    "stuffed_exception",
    "unwrap",
    "use_dispatch_script",
    "use_work_queue",
    "work_queue_of",
    "worker_queues",
    "wrap_cli_logging",
]

#: The Dramatiq release this module was checked against (pinned exactly in pyproject.toml).
TESTED = "2.2.1"
_MODULE = "middleware/dramatiq_seam.py"


def check_version(installed: str | None = None) -> None:
    """Raise ``RuntimeError`` unless the installed Dramatiq is exactly :data:`TESTED`."""
    installed = installed or importlib.metadata.version("dramatiq")
    if installed != TESTED:
        raise RuntimeError(
            f"jobkit's dramatiq seam was tested with dramatiq {TESTED}; installed {installed}: "
            f"run tests/test_seams.py and update {_MODULE}"
        )


# Messages --------------------------------------------------------------------------------


def unwrap(message: Message | MessageProxy) -> Message:
    """The Message inside a worker's MessageProxy (``MessageProxy._message``).

    Every attribute read on a proxy is a Python-level ``__getattr__`` call; the
    hooks that run for every job read the message a dozen times, so they read
    the wrapped message instead.
    """
    inner = message.__dict__.get("_message") if isinstance(message, MessageProxy) else None
    # Else a Message, or a proxy without one (never Dramatiq's), which reads like its message.
    return inner if inner is not None else cast(Message, message)


def stuffed_exception(message: Message | MessageProxy) -> BaseException | None:
    """What the job raised (``MessageProxy._exception``): the nack hooks are not handed it."""
    return getattr(message, "_exception", None)


#: ``_WorkQueueItem.message``: the MessageProxy inside an item of the worker's queue
#: (jobkit's queue orders items by the message's level).
queued_message: Callable[[Any], MessageProxy] = operator.attrgetter("message")


# The worker ------------------------------------------------------------------------------


def raise_in_thread(thread_id: int, exception: type[BaseException]) -> None:
    """Raise ``exception`` in a worker thread at its next bytecode, as TimeLimit does."""
    raise_thread_exception(thread_id, exception)


def clear_in_thread(thread_id: int) -> None:
    """Drop an exception :func:`raise_in_thread` set that the thread has not raised yet."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


def use_work_queue(worker: Worker, queue: PriorityQueue[Any]) -> None:
    """Replace ``Worker.work_queue``: threads started after ``before_worker_boot`` take it."""
    worker.work_queue = queue


def work_queue_of(worker: Worker) -> PriorityQueue[Any]:
    """``Worker.work_queue``: fetched messages waiting for a worker thread (paused by jobkit)."""
    return worker.work_queue


def worker_queues(worker: Worker) -> frozenset[str]:
    """The queues ``worker`` was told to consume (``Worker(queues=...)``, ``dramatiq -Q``).

    ``Worker.consumer_whitelist``; empty when it consumes every declared queue. A
    ``before_worker_boot`` hook that declares these makes the worker consume them.
    """
    return frozenset(worker.consumer_whitelist or ())


#: Logger of every worker thread (``dramatiq.worker.WorkerThread``): skipped and failed jobs.
WORKER_THREAD_LOGGER = "dramatiq.worker.WorkerThread"
#: Prefix of each consumer thread's logger, named ``dramatiq.worker.ConsumerThread(<queue>)``.
CONSUMER_THREAD_LOGGER = "dramatiq.worker.ConsumerThread"
#: Logger of Dramatiq's Retries middleware (and of jobkit's subclass, also named Retries).
RETRIES_LOGGER = "dramatiq.middleware.retries.Retries"
#: The format of the WARNING a worker thread logs for a skipped job; its argument is the message.
SKIPPED_MESSAGE_LOG = "Message %s was skipped."
#: The ERROR (with the exception) a worker thread logs for a job that raised.
FAILED_MESSAGE_LOG = "Failed to process message %s with unhandled exception."
#: Part of the WARNING a worker thread logs when an actor returns a value and no Results
#: middleware is installed (the actor's name is already formatted into it).
RESULT_DISCARDED_LOG = "returned a value that is not None"


# The dramatiq CLI ------------------------------------------------------------------------

#: ``dramatiq.cli``'s logging set-up functions: main process, worker processes, forks.
_CLI_LOGGING_SETUPS = ("setup_parent_logging", "setup_worker_logging", "setup_fork_logging")


def wrap_cli_logging(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace ``dramatiq.cli.setup_*_logging`` with ``wrap(setup)``: jobkit formats its lines."""
    import dramatiq.cli  # only `jobkit worker` needs the CLI module

    for name in _CLI_LOGGING_SETUPS:
        setattr(dramatiq.cli, name, wrap(getattr(dramatiq.cli, name)))


def is_cli_pipe(stream: object) -> bool:
    """Whether ``stream`` is ``dramatiq.compat.StreamablePipe``, a CLI worker's stdout/stderr."""
    return isinstance(stream, StreamablePipe)


def cli_app(argv: Sequence[str]) -> str | None:
    """The app a ``dramatiq`` command line loads (its ``broker`` argument: ``module`` or
    ``module:broker``), or ``None`` if ``argv`` is not such a command line.

    The CLI's worker processes and forks inherit its ``sys.argv`` (``jobkit worker``
    sets it too), so a fork can tell which app its group runs.
    """
    if not argv or "dramatiq" not in (Path(argv[0]).name, Path(argv[0]).parent.name):
        return None
    import dramatiq.cli

    def refuse(message: str) -> NoReturn:
        raise ValueError(message)

    parser = dramatiq.cli.make_argument_parser()
    parser.error = refuse  # quietly: no usage printed, no exit 2
    try:
        args, _ = parser.parse_known_args(list(argv[1:]))
    except (ValueError, SystemExit):
        return None
    return str(args.broker)


# RabbitMQ --------------------------------------------------------------------------------


class RabbitmqConsumerBase(_RabbitmqConsumer):
    """Dramatiq's private ``_RabbitmqConsumer``, which jobkit's consumer extends.

    A subclass relies on what its ``__init__`` sets: ``broker``, ``queue_name``,
    ``logger``, ``connection`` and ``channel`` (pika blocking ones), ``iterator``
    (``channel.consume``) and ``known_tags`` (delivery tags handed out and not
    settled), and on its ``close()``.
    """


#: ``_RabbitmqMessage(redelivered, tag, message)``: a delivery as Dramatiq's worker expects it.
RabbitmqDelivery: Callable[[bool, int, Message], MessageProxy] = _RabbitmqMessage

#: ``_RabbitmqMessage._tag``: a delivery's AMQP delivery tag, to ack or nack it.
delivery_tag: Callable[[MessageProxy], int] = operator.attrgetter("_tag")


def redeclare_later(broker: RabbitmqBroker, queue_name: str) -> None:
    """Add to ``RabbitmqBroker.queues_pending``: declare the (vanished) queue before next use."""
    broker.queues_pending.add(queue_name)


class RabbitmqBrokerBase(RabbitmqBroker):
    """RabbitmqBroker whose private queue declaration (``_declare_*``) has public hooks."""

    def queue_arguments(self, queue_name: str) -> dict[str, Any]:
        """Arguments a queue and its delay queue are declared with (``_build_queue_arguments``)."""
        return super()._build_queue_arguments(queue_name)

    def declaring(self, queue_name: str) -> AbstractContextManager[Any]:
        """Wraps the declaration of ``queue_name`` (a queue or its ``.DQ``); nothing here."""
        return contextlib.nullcontext()

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        """Dramatiq's private step, overridden: :meth:`queue_arguments`."""
        return self.queue_arguments(queue_name)

    def _declare_queue(self, queue_name: str) -> Any:
        """Dramatiq's private step, overridden: the declaration within :meth:`declaring`."""
        with self.declaring(queue_name):
            return super()._declare_queue(queue_name)

    def _declare_dq_queue(self, queue_name: str) -> Any:
        """Dramatiq's private step, overridden: the declaration within :meth:`declaring`."""
        with self.declaring(dq_name(queue_name)):
            return super()._declare_dq_queue(queue_name)


# Redis -----------------------------------------------------------------------------------


class RedisConsumerBase(_RedisConsumer):
    """Dramatiq's private ``_RedisConsumer``, which jobkit's consumer extends.

    A subclass relies on what its ``__init__`` sets: ``broker``, ``queue_name``,
    ``prefetch``, ``timeout``, ``message_cache``, ``queued_message_ids`` and
    ``misses``; on its ``outstanding_message_count``; and on its ``nack`` (to the
    ``.XQ``, through the broker's ``nack`` script command).
    """


class RedisBrokerBase(RedisBroker):
    """RedisBroker whose private maintenance choice (``_should_do_maintenance``) is open."""

    #: Script commands that always run maintenance (Dramatiq runs it by chance on others).
    maintenance_commands: frozenset[str] = frozenset()

    def _should_do_maintenance(self, command: str) -> int:
        """Dramatiq's private chance, overridden: 1 for :attr:`maintenance_commands`."""
        if command in self.maintenance_commands:
            return 1
        return super()._should_do_maintenance(command)


def use_dispatch_script(broker: RedisBroker, source: bytes) -> None:
    """Make ``source`` the script every command runs (``RedisBroker.scripts["dispatch"]``)."""
    broker.scripts["dispatch"] = broker.client.register_script(source)


def redis_command(broker: RedisBroker, command: str) -> Callable[..., Any]:
    """``broker.do_<command>``: the dispatch script's command, as ``RedisBroker.__getattr__``
    resolves it, so whatever replaces that attribute (Dramatiq's own tests mock ``do_ack``)
    is what runs."""
    return cast(Callable[..., Any], getattr(broker, f"do_{command}"))


def script_command(broker: RedisBroker, command: str) -> Callable[..., Any]:
    """The dispatch script's ``command`` itself (``RedisBroker._dispatch``), for a broker
    whose own ``do_<command>`` wraps it (jobkit's ``do_fetch``)."""
    return broker._dispatch(command)


def pipeline_command(
    broker: RedisBroker, pipe: Any, command: str, queue_name: str, *args: Any
) -> None:
    """Queue ``command`` on ``pipe``, with ``_dispatch``'s arguments but no maintenance (bulk)."""
    broker.scripts["dispatch"](
        keys=[broker.namespace],
        args=[
            command,
            current_millis(),
            queue_name,
            broker.broker_id,
            broker.heartbeat_timeout,
            broker.dead_message_ttl,
            "0",
            broker._max_unpack_size(),
            *args,
        ],
        client=pipe,
    )
