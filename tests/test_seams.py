"""The seams: every private part of Dramatiq, pika and prometheus-client jobkit uses, checked.

``middleware/dramatiq_seam.py``, ``brokers/pika_seam.py`` and
``middleware/prometheus_seam.py`` are the only product modules that touch those
libraries' private parts. Here, for each: the installed version is the tested
one (a different one fails with what to do); every private part it relies on
still exists and still behaves as the seam expects on the installed version;
and no other product module touches them. An upgrade fails here, not in
production.

Broker-free: brokers are built without connecting, pika's connection runs
without a socket, and the worker runs on Dramatiq's stub broker.
"""

from __future__ import annotations

import ast
import logging
import math
import re
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path
from queue import PriorityQueue
from typing import Any

import dramatiq
import dramatiq.brokers.rabbitmq
import dramatiq.cli
import dramatiq.compat
import pika
import pika.exceptions
import pika.frame
import pika.spec
import prometheus_client as prom
import pytest
import redis
from dramatiq import Message, Middleware, Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import SkipMessage
from pika.adapters.blocking_connection import BlockingChannel

from brokers import pika_seam
from brokers.rabbitmq.amqp_broker import PriorityRabbitmqBroker, QueueNeedsMigration
from brokers.redis.broker import PriorityRedisBroker
from middleware import dramatiq_seam, prometheus_seam
from middleware.priorities import PriorityConfig
from middleware.retries import Retries as JobkitRetries

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("jobkit", "actors", "brokers", "middleware")
SEAMS = {
    "dramatiq": (dramatiq_seam, "middleware/dramatiq_seam.py"),
    "pika": (pika_seam, "brokers/pika_seam.py"),
    "prometheus-client": (prometheus_seam, "middleware/prometheus_seam.py"),
}
#: An address where nothing listens: brokers built with it never connect in these tests.
NOWHERE_AMQP = "amqp://guest:guest@127.0.0.1:1/"


def a_message(**options: Any) -> Message:
    return Message(queue_name="q", actor_name="job", args=(), kwargs={}, options=options)


# Versions --------------------------------------------------------------------------------


@pytest.mark.parametrize("library", SEAMS)
def test_the_installed_version_is_the_tested_one(library: str) -> None:
    seam, _ = SEAMS[library]
    seam.check_version()
    seam.check_version(seam.TESTED)


@pytest.mark.parametrize(
    ("library", "other"),
    [("dramatiq", "2.2.2"), ("dramatiq", "2.3.0"), ("pika", "1.5.0"), ("pika", "2.0.0")]
    + [("prometheus-client", "0.27.0"), ("prometheus-client", "1.0.0")],
)
def test_another_version_fails_with_what_to_do(library: str, other: str) -> None:
    seam, path = SEAMS[library]
    expected = (
        f"jobkit's {library} seam was tested with {library} {seam.TESTED}; installed {other}: "
        f"run tests/test_seams.py and update {path}"
    )
    with pytest.raises(RuntimeError) as raised:
        seam.check_version(other)
    assert str(raised.value) == expected


@pytest.mark.parametrize(("library", "patch"), [("pika", "1.4.0"), ("prometheus-client", "0.26.9")])
def test_pika_and_prometheus_accept_another_patch_release(library: str, patch: str) -> None:
    """Major.minor for these two; Dramatiq, pinned exactly, must match exactly."""
    SEAMS[library][0].check_version(patch)


def test_dramatiq_s_tested_version_is_the_pinned_one() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if d.startswith("dramatiq")]
    assert pins == [f"dramatiq[redis,rabbitmq]=={dramatiq_seam.TESTED}"]


# Dramatiq: messages ----------------------------------------------------------------------


def test_a_message_proxy_keeps_its_message_and_the_job_s_exception() -> None:
    message = a_message()
    proxy = MessageProxy(message)
    assert "_message" in vars(proxy)
    assert dramatiq_seam.unwrap(proxy) is message
    assert dramatiq_seam.unwrap(message) is message
    assert dramatiq_seam.stuffed_exception(proxy) is None
    error = ValueError("boom")
    proxy.stuff_exception(error)
    assert "_exception" in vars(proxy)
    assert dramatiq_seam.stuffed_exception(proxy) is error
    assert dramatiq_seam.stuffed_exception(message) is None


# Dramatiq: the worker --------------------------------------------------------------------


class RecordingQueue(PriorityQueue):  # type: ignore[type-arg]
    """A work queue that keeps what was put in it."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[Any] = []

    def _put(self, item: Any) -> None:
        self.items.append(item)
        super()._put(item)


class UseQueueAndSkip(Middleware):
    """Installs a work queue before the worker boots, and skips one message."""

    def __init__(self, queue: RecordingQueue, skip_id: str) -> None:
        self.queue = queue
        self.skip_id = skip_id

    def before_worker_boot(self, broker: Any, worker: Worker) -> None:
        dramatiq_seam.use_work_queue(worker, self.queue)

    def before_process_message(self, broker: Any, message: Any) -> None:
        if message.message_id == self.skip_id:
            raise SkipMessage()


def test_a_worker_takes_the_work_queue_set_before_boot_and_names_its_loggers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = StubBroker(middleware=[])
    queue = RecordingQueue()
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="q")
    def job(n: int) -> None:
        ran.append(n)

    skipped = job.message(2)
    broker.add_middleware(UseQueueAndSkip(queue, skipped.message_id))
    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    caplog.set_level(logging.WARNING)
    worker.start()
    try:
        assert dramatiq_seam.work_queue_of(worker) is queue
        job.send(1)
        broker.enqueue(skipped)
        broker.join("q", timeout=10_000)
        worker.join()
        assert ran == [1]
        # Every fetched message went through the queue, as a _WorkQueueItem.
        assert [dramatiq_seam.queued_message(item).args for item in queue.items] == [(1,), (2,)]
        assert all(isinstance(dramatiq_seam.queued_message(i), MessageProxy) for i in queue.items)
        assert {thread.logger.name for thread in worker.workers} == {
            dramatiq_seam.WORKER_THREAD_LOGGER
        }
        assert worker.consumers["q"].logger.name == f"{dramatiq_seam.CONSUMER_THREAD_LOGGER}(q)"
    finally:
        worker.stop()
    skips = [r for r in caplog.records if r.msg == dramatiq_seam.SKIPPED_MESSAGE_LOG]
    assert [r.name for r in skips] == [dramatiq_seam.WORKER_THREAD_LOGGER]
    # The skipped message, or (once jobkit configured this process's logging) its description.
    logged = skips[0].args[0]  # type: ignore[index]
    assert getattr(logged, "message_id", None) == skipped.message_id or (
        f"message_id={skipped.message_id}" in str(logged)
    )


class DeclareWorkerQueues(Middleware):
    def before_worker_boot(self, broker: Any, worker: Worker) -> None:
        for name in dramatiq_seam.worker_queues(worker):
            broker.declare_queue(name)


def test_a_worker_consumes_the_queues_it_was_given_once_they_are_declared_before_boot() -> None:
    """What `jobkit demo`'s workers rely on: `-Q` names queues no actor declares."""
    broker = StubBroker(middleware=[])
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="q")
    def job(tag: str) -> None:
        ran.append(tag)

    assert dramatiq_seam.worker_queues(Worker(broker, worker_threads=1)) == frozenset()
    broker.add_middleware(DeclareWorkerQueues())
    worker = Worker(broker, queues={"run-1.q"}, worker_threads=1, worker_timeout=100)
    assert dramatiq_seam.worker_queues(worker) == {"run-1.q"}
    job.send("on the actor's queue")
    worker.start()
    try:
        broker.enqueue(job.message("on the run's queue").copy(queue_name="run-1.q"))
        broker.join("run-1.q", timeout=10_000)
        worker.join()
        assert ran == ["on the run's queue"]
        assert set(worker.consumers) == {"run-1.q", "run-1.q.DQ"}
    finally:
        worker.stop()


def test_the_retries_logger_is_named_as_the_seam_says() -> None:
    assert dramatiq.middleware.Retries().logger.name == dramatiq_seam.RETRIES_LOGGER
    assert JobkitRetries().logger.name == dramatiq_seam.RETRIES_LOGGER


# Dramatiq: the CLI -----------------------------------------------------------------------


def test_the_cli_logging_setups_exist_and_are_looked_up_when_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = ("setup_parent_logging", "setup_worker_logging", "setup_fork_logging")
    originals = {name: getattr(dramatiq.cli, name) for name in names}
    for name, setup in originals.items():
        assert callable(setup)
        monkeypatch.setattr(dramatiq.cli, name, setup)  # put back after the test
    # The CLI calls them by their module-level names, so replacing those takes effect.
    assert "setup_parent_logging" in dramatiq.cli.main.__code__.co_names
    assert "setup_worker_logging" in dramatiq.cli.worker_process.__code__.co_names
    assert "setup_fork_logging" in dramatiq.cli.fork_process.__code__.co_names
    dramatiq_seam.wrap_cli_logging(lambda setup: ("wrapped", setup))
    assert {name: getattr(dramatiq.cli, name) for name in names} == {
        name: ("wrapped", setup) for name, setup in originals.items()
    }


def test_a_cli_worker_s_pipe_is_recognised() -> None:
    assert dramatiq_seam.is_cli_pipe(dramatiq.compat.StreamablePipe(None))
    assert not dramatiq_seam.is_cli_pipe(None)
    # What the CLI hands its worker processes and forks as their stdout and stderr.
    assert "StreamablePipe" in dramatiq.cli.main.__code__.co_names


def test_a_cli_command_line_names_its_app_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    """What the metrics exporter, a fork of the CLI, reports as its group's app."""
    cli_app = dramatiq_seam.cli_app
    assert cli_app(["dramatiq", "-p", "2", "shop.jobs", "-t", "4"]) == "shop.jobs"
    assert cli_app(["/venv/bin/dramatiq", "shop.jobs:broker", "more.jobs", "-Q", "a"]) == (
        "shop.jobs:broker"
    )
    assert cli_app(["/lib/site-packages/dramatiq/__main__.py", "actors"]) == "actors"  # -m
    assert cli_app(["pytest", "tests/test_seams.py"]) is None  # not the CLI
    assert cli_app(["dramatiq"]) is None  # not a command line the CLI runs
    assert cli_app(["dramatiq", "--processes", "many", "actors"]) is None
    assert capsys.readouterr() == ("", "")  # no usage printed, no exit
    # The CLI hands its forks its own arguments, parsed by this parser.
    assert "make_argument_parser" in dramatiq.cli.main.__code__.co_names


# Dramatiq: RabbitMQ ----------------------------------------------------------------------


class FakeChannel:
    """Records queue declarations; raises ``error`` for those named in ``refuse``."""

    is_open = False

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.declared: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse

    def queue_declare(self, queue: str, durable: bool, arguments: dict[str, Any]) -> None:
        if queue in self.refuse:
            raise pika.exceptions.ChannelClosedByBroker(
                406, f"PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue '{queue}'"
            )
        self.declared.append((queue, arguments))

    def basic_qos(self, prefetch_count: int) -> None:
        pass

    def consume(self, queue: str, inactivity_timeout: float) -> Any:
        return iter(())


class FakeConnection:
    def __init__(self, parameters: Any = None) -> None:
        self.parameters = parameters

    def channel(self) -> FakeChannel:
        return FakeChannel()


def test_the_rabbitmq_consumer_base_sets_what_jobkit_s_consumer_uses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dramatiq.brokers.rabbitmq.pika, "BlockingConnection", FakeConnection)
    broker = RabbitmqBroker(url=NOWHERE_AMQP, middleware=[])
    consumer = dramatiq_seam.RabbitmqConsumerBase(broker, "q", 2, 1000)
    assert consumer.broker is broker and consumer.queue_name == "q"
    assert isinstance(consumer.connection, FakeConnection)
    assert isinstance(consumer.channel, FakeChannel)
    assert consumer.iterator is not None
    assert consumer.known_tags == set()
    assert isinstance(consumer.logger, logging.Logger)
    assert callable(consumer.close)


def test_a_rabbitmq_delivery_carries_its_tag_and_message() -> None:
    message = a_message()
    delivery = dramatiq_seam.RabbitmqDelivery(True, 7, message)
    assert isinstance(delivery, MessageProxy)
    assert dramatiq_seam.delivery_tag(delivery) == 7
    assert delivery.redelivered is True
    assert dramatiq_seam.unwrap(delivery) is message
    assert isinstance(dramatiq_seam.MAX_ENQUEUE_ATTEMPTS, int)


class HookedRabbitmqBroker(dramatiq_seam.RabbitmqBrokerBase):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.declaring_queues: list[str] = []

    def queue_arguments(self, queue_name: str) -> dict[str, Any]:
        return {**super().queue_arguments(queue_name), "x-test": queue_name}

    def declaring(self, queue_name: str) -> Any:
        self.declaring_queues.append(queue_name)
        return super().declaring(queue_name)


def test_the_rabbitmq_broker_declares_queues_through_the_seam_s_hooks() -> None:
    broker = HookedRabbitmqBroker(url=NOWHERE_AMQP, middleware=[], max_priority=3)
    channel = FakeChannel()
    broker.state.channel = channel  # what the broker's channel property hands out
    broker.declare_queue("q", ensure=True)
    assert broker.declaring_queues == ["q", "q.DQ"]
    declared = dict(channel.declared)
    assert list(declared) == ["q", "q.DQ", "q.XQ"]
    for name in ("q", "q.DQ"):
        assert declared[name] == {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "q.XQ",
            "x-max-priority": 3,
            "x-test": "q",
        }
    assert broker.queues_pending == set()
    dramatiq_seam.redeclare_later(broker, "q")
    assert broker.queues_pending == {"q"}


def test_jobkit_s_rabbitmq_broker_declares_priority_queues_and_explains_a_mismatch() -> None:
    broker = PriorityRabbitmqBroker(url=NOWHERE_AMQP, middleware=[], max_priority=3)
    channel = FakeChannel()
    broker.state.channel = channel
    broker.declare_queue("q", ensure=True)
    assert dict(channel.declared)["q"]["x-queue-version"] == 2
    assert dict(channel.declared)["q"]["x-max-priority"] == 3
    refusing = FakeChannel(refuse=("old.DQ",))
    broker.state.channel = refusing
    broker.channels.add(refusing)
    with pytest.raises(QueueNeedsMigration, match=r"queue 'old.DQ' already exists"):
        broker.declare_queue("old", ensure=True)


# Dramatiq: Redis -------------------------------------------------------------------------


def an_offline_client() -> redis.Redis:
    """A client that never connects in these tests (scripts register without a round trip)."""
    return redis.Redis(host="127.0.0.1", port=1)


def test_the_redis_consumer_base_sets_what_jobkit_s_consumer_uses() -> None:
    broker = object()
    consumer = dramatiq_seam.RedisConsumerBase(broker, "q", 3, 1000)
    assert consumer.broker is broker and consumer.queue_name == "q"
    assert (consumer.prefetch, consumer.timeout, consumer.misses) == (3, 1000, 0)
    assert consumer.message_cache == [] and consumer.queued_message_ids == set()
    assert consumer.outstanding_message_count == 0
    assert callable(consumer.nack)


class Maintained(dramatiq_seam.RedisBrokerBase):
    maintenance_commands = frozenset({"sweep"})
    _max_unpack_size_val = 1234  # RedisBroker asks the server otherwise


def test_the_redis_broker_s_maintenance_and_script_commands() -> None:
    broker = Maintained(client=an_offline_client(), middleware=[], maintenance_chance=0)
    assert broker._should_do_maintenance("sweep") == 1
    assert broker._should_do_maintenance("fetch") == 0
    calls: list[dict[str, Any]] = []
    broker.scripts["dispatch"] = lambda **call: calls.append(call)
    dramatiq_seam.redis_command(broker, "fetch")("q", 5)
    broker.do_fetch("q", 5)  # what redis_command stands for
    dramatiq_seam.script_command(broker, "fetch")("q", 5)  # the script itself, the same call
    pipe = object()
    dramatiq_seam.pipeline_command(broker, pipe, "fetch", "q", 5)
    prefix = ["fetch", "q", broker.broker_id, broker.heartbeat_timeout, broker.dead_message_ttl]
    for call in calls:
        assert call["keys"] == [broker.namespace]
        args = call["args"]
        assert isinstance(args[1], int)  # the time, in ms
        assert [args[0], *args[2:6]] == prefix
        assert args[7:] == [1234, 5]
    assert [call["args"][6] for call in calls] == [0, 0, 0, "0"]  # maintenance: never here
    assert "client" not in calls[0] and calls[3]["client"] is pipe
    dramatiq_seam.use_dispatch_script(broker, b"return 1")
    assert broker.scripts["dispatch"].script == b"return 1"


def test_jobkit_s_redis_broker_always_maintains_on_a_sweep() -> None:
    broker = PriorityRedisBroker(
        priority_config=PriorityConfig(), client=an_offline_client(), middleware=[]
    )
    assert broker._should_do_maintenance("sweep") == 1
    assert broker._should_do_maintenance("ack") == 0  # Dramatiq's own rule: never on acks


# pika ------------------------------------------------------------------------------------


class FakeChannelImpl:
    channel_number = 1

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def test_a_blocking_channel_has_its_async_channel_underneath() -> None:
    impl = FakeChannelImpl()
    channel = BlockingChannel(impl, None)  # type: ignore[arg-type]
    assert pika_seam.channel_impl(channel) is impl


@pytest.fixture
def offline_connection() -> Iterator[Any]:
    """A real pika connection (its SelectConnection underneath) that never opens a socket."""
    impl = pika.SelectConnection(pika.ConnectionParameters(), internal_connection_workflow=False)

    class Offline(pika.BlockingConnection):
        def _create_connection(self, parameters: Any, impl_class: Any) -> Any:
            return impl

    try:
        yield Offline()
    finally:
        impl.ioloop.close()


def test_the_frame_gatherer_writes_a_connection_s_frames_at_once(offline_connection: Any) -> None:
    impl = offline_connection._impl
    written: list[bytes] = []
    impl._adapter_emit_data = written.append  # instead of the socket
    frame = pika.frame.Method(1, pika.spec.Basic.Ack(1))
    size = len(frame.marshal())
    gatherer = pika_seam.FrameGatherer(offline_connection)
    assert gatherer.active
    for _ in range(3):
        impl._send_frame(frame)
    assert written == [] and impl.frames_sent == 3
    gatherer.flush()
    assert written == [frame.marshal() * 3] and impl.bytes_sent == 3 * size
    gatherer.release()
    assert "_output_marshaled_frames" not in vars(impl)
    impl._send_frame(frame)  # pika's own writer again: one write per frame
    assert written[1:] == [frame.marshal()]
    assert (impl.frames_sent, impl.bytes_sent) == (4, 4 * size)


def test_the_frame_gatherer_leaves_an_unknown_connection_alone() -> None:
    gatherer = pika_seam.FrameGatherer(types.SimpleNamespace(_impl=object()))  # type: ignore[arg-type]
    assert not gatherer.active
    gatherer.flush()
    gatherer.release()


# prometheus-client -----------------------------------------------------------------------


def test_a_histogram_s_buckets_take_a_second_s_observations_at_once() -> None:
    registry = prom.CollectorRegistry()
    direct = prom.Histogram("direct", "", ("a",), buckets=(1, 2), registry=registry)
    summed = prom.Histogram("summed", "", ("a",), buckets=(1, 2), registry=registry)
    observed = [0.5, 1.5, 1.5, 7.0]
    for value in observed:
        direct.labels("x").observe(value)
    child = summed.labels("x")
    assert list(prometheus_seam.bucket_bounds(child)) == [1.0, 2.0, math.inf]
    assert hasattr(child, "_sum") and len(child._buckets) == 3
    prometheus_seam.add_observations(child, sum(observed), [1, 2, 1])
    prometheus_seam.add_observations(child, 0.0, [0, 0, 0])  # nothing to add

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        family = next(f for f in registry.collect() if f.name == name)
        return [
            (s.name.removeprefix(name), s.labels, s.value)
            for s in family.samples
            if not s.name.endswith("_created")  # when each was made
        ]

    assert samples("summed") == samples("direct")


# No other module touches them ------------------------------------------------------------

#: The private names the seams cover, as attributes, method overrides or strings.
PRIVATE_ATTRIBUTES = {
    # Dramatiq
    "_message",
    "_exception",
    "_tag",
    "_should_do_maintenance",
    "_build_queue_arguments",
    "_declare_queue",
    "_declare_dq_queue",
    "_dispatch",
    "_max_unpack_size",
    "queues_pending",
    "scripts",
    "work_queue",
    "consumer_whitelist",
    "setup_parent_logging",
    "setup_worker_logging",
    "setup_fork_logging",
    # RedisBroker's script commands through __getattr__ (jobkit's broker defines do_fetch).
    "do_enqueue",
    "do_enqueue_batch",
    "do_ack",
    "do_nack",
    "do_requeue",
    "do_qsize",
    "do_purge",
    "do_sweep",
    # pika
    "_impl",
    "_adapter_emit_data",
    "_output_marshaled_frames",
    "frames_sent",
    "bytes_sent",
    # prometheus-client
    "_upper_bounds",
    "_sum",
    "_buckets",
}
#: Names imported from the libraries: any with a leading underscore, and these.
PRIVATE_IMPORTS = {"MAX_ENQUEUE_ATTEMPTS", "StreamablePipe"}
PRIVATE_MODULES = ("dramatiq.compat",)
LIBRARIES = ("dramatiq", "pika", "prometheus_client")
#: Dramatiq's logger names and log format, which only the seam spells.
PRIVATE_STRINGS = re.compile(
    r"^(dramatiq\.worker\.|dramatiq\.middleware\.retries\.|Message %s was)"
)
SEAM_PATHS = {path for _, path in SEAMS.values()}


def private_uses(path: Path, source: str | None = None) -> list[str]:
    """Where ``path``'s code touches a private name the seams cover."""
    tree = ast.parse(source if source is not None else path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            name = node.attr
        elif (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name in PRIVATE_ATTRIBUTES
        ):
            name = f"def {node.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in PRIVATE_ATTRIBUTES or PRIVATE_STRINGS.match(node.value):
                name = repr(node.value)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] in LIBRARIES:
                private = [
                    a.name
                    for a in node.names
                    if a.name.startswith("_") or a.name in PRIVATE_IMPORTS
                ]
                if node.module.startswith(PRIVATE_MODULES) or private:
                    name = f"from {node.module} import {', '.join(private) or '...'}"
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names if a.name.startswith(PRIVATE_MODULES)]
            name = f"import {', '.join(modules)}" if modules else None
        if name is not None:
            found.append((getattr(node, "lineno", 0), name))
    return [f"{path}:{line} {name}" for line, name in sorted(found)]


def test_no_module_but_the_seams_touches_those_private_parts() -> None:
    found = [
        use
        for package in PRODUCT
        for path in sorted((REPO / package).rglob("*.py"))
        if str(path.relative_to(REPO)) not in SEAM_PATHS
        for use in private_uses(path.relative_to(REPO), path.read_text())
    ]
    assert found == []


def test_the_scan_sees_a_private_use() -> None:
    """The check above is not vacuous: it finds each kind of use."""
    sample = (
        "from dramatiq.brokers.redis import _RedisConsumer\n"
        "from dramatiq.compat import StreamablePipe\n"
        "def f(message, impl, broker):\n"
        "    getattr(message, '_exception', None)\n"
        "    impl._output_marshaled_frames = None\n"
        "    broker.do_ack('q', 'id')\n"
        "    logging.getLogger('dramatiq.worker.WorkerThread')\n"
        "class C:\n"
        "    def _should_do_maintenance(self, command): ...\n"
    )
    found = [use.split(" ", 1)[1] for use in private_uses(Path("sample.py"), sample)]
    assert found == [
        "from dramatiq.brokers.redis import _RedisConsumer",
        "from dramatiq.compat import StreamablePipe",
        "'_exception'",
        "_output_marshaled_frames",
        "do_ack",
        "'dramatiq.worker.WorkerThread'",
        "def _should_do_maintenance",
    ]


def test_every_name_the_scan_looks_for_is_the_seams_business() -> None:
    """Each scanned name appears in a seam: the list follows the seams, not the reverse."""
    seams_text = "\n".join((REPO / path).read_text() for path in SEAM_PATHS)
    do_commands = {name for name in PRIVATE_ATTRIBUTES if name.startswith("do_")}
    names = (PRIVATE_ATTRIBUTES - do_commands) | PRIVATE_IMPORTS
    missing = sorted(name for name in names if name not in seams_text)
    assert missing == []
    assert "do_<command>" in seams_text
