"""Message bodies: orjson where it writes the same data as Dramatiq's encoder, else Dramatiq's."""

from __future__ import annotations

import datetime
import enum
import json
import math

import pytest
from dramatiq import Message

from brokers.decoding import decode_message
from brokers.encoding import encode_message, message_fields

QUEUE = "jobkit-test"


class Size(enum.IntEnum):
    LARGE = 3


def _message(*args: object, **kwargs: object) -> Message:
    return Message(QUEUE, "job", args, kwargs, {"priority": "high", "retries": 2})


def test_fields_are_asdicts() -> None:
    message = _message(1, "a", name="b")
    assert message_fields(message) == message.asdict()
    assert message_fields(message)["options"] is message.options


def test_a_plain_message_carries_the_same_data_and_decodes_to_the_same_message() -> None:
    message = _message(1, 2.5, "naïve ☃ 😀", [1, {"a": True}], (3, 4), note="x\ny\u2028")
    body = encode_message(message)
    assert body != message.encode()  # UTF-8, not escaped ASCII: orjson wrote it
    assert json.loads(body) == json.loads(message.encode())
    assert decode_message(body) == decode_message(message.encode())


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        None,
        {1: "int key"},
        Size.LARGE,
        2**70,
    ],
    ids=["nan", "inf", "none", "int-key", "int-enum", "big-int"],
)
def test_what_orjson_would_write_differently_is_written_by_dramatiq(value: object) -> None:
    message = _message(value)
    assert encode_message(message) == message.encode()


def test_what_dramatiq_refuses_is_refused_as_dramatiq_refuses_it() -> None:
    message = _message(datetime.datetime(2026, 11, 30))
    with pytest.raises(TypeError, match="not JSON serializable"):
        message.encode()
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_message(message)
