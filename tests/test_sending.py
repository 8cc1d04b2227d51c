"""Sending a job: arguments JSON cannot carry, or that do not fit the actor, fail at send."""

from __future__ import annotations

import datetime
import decimal
import enum
import logging
import math
import uuid
from typing import Any

import dramatiq
import pytest
from dramatiq import Broker, Message
from dramatiq.brokers.stub import StubBroker

from brokers import queue_depths
from brokers.dead_letter_store import dead_letter_store
from brokers.stack import build_stack
from jobkit.errors import JobkitError
from jobkit.settings import load_settings
from middleware.dead_letters import new_record
from middleware.send_checks import JSON_HINT, BadArguments, Shape

QUEUE = "jobkit-test"


class Colour(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    LARGE = 3


def declare(broker: Broker) -> dramatiq.Actor:
    def send_email(user: int, to: Any, subject: str = "hi", *, cc: Any = None) -> None:
        pass

    return dramatiq.actor(send_email, broker=broker, queue_name=QUEUE)


def ready(broker: Broker) -> int:
    if isinstance(broker, StubBroker):
        return broker.queues[QUEUE].qsize()
    (depth,) = [d for d in queue_depths(broker, {QUEUE}) if d.queue == QUEUE]
    return depth.ready


def no_critical_line(caplog: pytest.LogCaptureFixture) -> bool:
    return not [r for r in caplog.records if r.levelno >= logging.CRITICAL]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (object(), "an object"),
        ({1, 2}, "a set"),
        (decimal.Decimal("1.5"), "a Decimal"),
        (b"bytes", "bytes"),
        (uuid.uuid4(), "a UUID"),  # orjson would write these two, Dramatiq's encoder refuses them:
        (Colour.RED, "a Colour"),  # refused on every broker alike
        (datetime.date(2026, 11, 30), "a date"),
    ],
    ids=["object", "set", "decimal", "bytes", "uuid", "enum", "date"],
)
def test_an_argument_json_cannot_carry_fails_the_send_with_one_line(
    broker: Broker, caplog: pytest.LogCaptureFixture, value: object, kind: str
) -> None:
    job = declare(broker)
    with pytest.raises(BadArguments) as error:
        job.send(1, value)
    assert str(error.value) == (
        f"send_email.send(...): argument 2 ('to', {kind}) cannot be sent as JSON; {JSON_HINT}"
    )
    assert isinstance(error.value, JobkitError) and isinstance(error.value, TypeError)
    assert no_critical_line(caplog)
    assert ready(broker) == 0


def test_the_line_names_keyword_arguments_and_where_inside_the_value(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    job = declare(broker)
    with pytest.raises(BadArguments, match=r"argument 'cc' \(a set\) cannot be sent as JSON"):
        job.send(1, "ada@example.com", cc={"b@example.org"})
    with pytest.raises(
        BadArguments,
        match=r"argument 2 \('to'\) holds a Decimal at \['total'\]\[1\], which cannot be sent",
    ):
        job.send(1, {"total": [1, decimal.Decimal("2.5")]})
    with pytest.raises(BadArguments, match=r"holds a dict at \[0\], which has a key of type tuple"):
        job.send_with_options(args=(1, [{(1, 2): "x"}]))
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(BadArguments, match="nested too deeply"):
        job.send(1, loop)
    with pytest.raises(BadArguments, match=r"option 'time_limit' \(a Decimal\)"):
        job.send_with_options(args=(1, "a"), time_limit=decimal.Decimal(5))
    assert no_critical_line(caplog)
    assert ready(broker) == 0


def test_what_dramatiqs_encoder_takes_is_sent(broker: Broker) -> None:
    job = declare(broker)
    for value in (Size.LARGE, {1: "int key"}, (1, 2), None, math.nan, 2**70, "naïve ☃"):
        job.send(1, value)
    assert ready(broker) == 7


def test_json_is_checked_without_a_size_limit() -> None:
    broker = StubBroker(middleware=build_stack(load_settings({"JOBKIT_MAX_MESSAGE_BYTES": "0"})))
    broker.emit_after("process_boot")
    job = declare(broker)
    with pytest.raises(BadArguments, match=r"argument 2 \('to', a set\)"):
        job.send(1, {2})
    assert broker.queues[QUEUE].qsize() == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "misfit"),
    [
        ((1,), {}, "missing a required argument: 'to'"),
        ((1, "a", "b", "c"), {}, "too many positional arguments"),
        ((1, "a"), {"bcc": "x"}, "got an unexpected keyword argument 'bcc'"),
        ((1, "a"), {"user": 2}, "multiple values for argument 'user'"),
    ],
)
def test_arguments_that_do_not_fit_the_actor_fail_the_send(
    broker: Broker,
    caplog: pytest.LogCaptureFixture,
    args: tuple,
    kwargs: dict[str, Any],
    misfit: str,
) -> None:
    job = declare(broker)
    with pytest.raises(BadArguments) as error:
        job.send(*args, **kwargs)
    assert str(error.value) == (
        "send_email.send(...): wrong arguments for "
        f"send_email(user: int, to: Any, subject: str = 'hi', *, cc: Any = None): {misfit}"
    )
    assert no_critical_line(caplog)
    assert ready(broker) == 0
    job.send(1, "ada@example.com", cc=["b"])
    assert ready(broker) == 1


def test_the_quick_fit_agrees_with_python(broker: Broker) -> None:
    def plain(a: int, b: int = 2, *, c: int, d: int = 4) -> None: ...

    def varied(a: int, /, *args: int, **kwargs: int) -> None: ...

    calls: list[tuple[tuple, dict[str, Any]]] = [
        ((), {}), ((1,), {}), ((1,), {"c": 3}), ((1, 2), {"c": 3, "d": 4}), ((), {"a": 1, "c": 3}),
        ((1, 2, 3), {"c": 3}), ((1,), {"a": 1, "c": 3}), ((1,), {"c": 3, "e": 5}), ((1,), {"b": 2}),
    ]  # fmt: skip
    for fn in (plain, varied):
        shape = Shape(fn)
        for args, kwargs in calls:
            try:
                fn(*args, **kwargs)
            except TypeError:
                assert shape.misfit(args, kwargs) is not None, (fn, args, kwargs)
            else:
                assert shape.misfit(args, kwargs) is None, (fn, args, kwargs)


def test_pipeline_steps_are_checked_with_the_result_they_will_get(broker: Broker) -> None:
    first = declare(broker)

    def count(total: int) -> None: ...

    def note(text: str) -> None: ...

    then = dramatiq.actor(count, broker=broker, queue_name=QUEUE)
    other = dramatiq.actor(note, broker=broker, queue_name=QUEUE)
    dramatiq.pipeline([first.message(1, "a"), then.message()], broker=broker).run()
    dramatiq.pipeline(
        [first.message(1, "a"), other.message_with_options(args=("x",), pipe_ignore=True)],
        broker=broker,
    ).run()
    assert ready(broker) == 2
    with pytest.raises(
        BadArguments,
        match=r"send_email.send\(\.\.\.\): pipeline step 3: wrong arguments for note\(text: str\): "
        r"too many positional arguments \(the previous step's result comes as its last argument",
    ):
        dramatiq.pipeline(
            [first.message(1, "a"), then.message(), other.message("x")], broker=broker
        ).run()
    assert ready(broker) == 2


def test_enqueues_that_are_not_sends_are_not_checked_against_the_signature() -> None:
    """A delayed job coming due, a deferral, a retry, a replay: sent once already, as it was."""
    broker = StubBroker(middleware=build_stack())
    declare(broker)
    due = Message(QUEUE, "send_email", (), {}, {"eta": 1})
    broker.enqueue(due)
    replayed = Message(QUEUE, "send_email", (), {}, {"replayed_from": "dl-1"})
    broker.enqueue(replayed)
    assert broker.queues[QUEUE].qsize() == 2
    with pytest.raises(BadArguments, match="missing a required argument"):
        broker.enqueue(Message(QUEUE, "send_email", (), {}, {}))


def test_a_message_for_an_actor_declared_elsewhere_is_checked_for_json_only() -> None:
    broker = StubBroker(middleware=build_stack())
    broker.declare_queue(QUEUE)
    broker.enqueue(Message(QUEUE, "declared_in_the_workers", (1, 2, 3), {}, {}))
    with pytest.raises(BadArguments, match=r"declared_in_the_workers.send\(\.\.\.\): argument 1"):
        broker.enqueue(Message(QUEUE, "declared_in_the_workers", ({1},), {}, {}))


def test_a_dead_letter_whose_actor_changed_is_replayed_as_it_was(system_broker: Broker) -> None:
    declare(system_broker)
    store = dead_letter_store(system_broker)
    old = Message(QUEUE, "send_email", ("ada@example.com",), {}, {})  # the actor took one argument
    store.add(new_record(queue=QUEUE, reason="retries_exhausted", dead_letter_id="dl-1",
                         actor="send_email", message=old.asdict()))  # fmt: skip
    report = store.replay(["dl-1"])
    assert list(report.replayed) == ["dl-1"] and not report.failed
    assert ready(system_broker) == 1
