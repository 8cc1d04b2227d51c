"""Message rules: JSON only, a size limit at send and at consume, HMAC signing with rotation."""

from __future__ import annotations

import json
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq import Broker, Message
from dramatiq.brokers.stub import StubBroker
from dramatiq.encoder import JSONEncoder, PickleEncoder

from brokers.dead_letter_store import dead_letter_store
from brokers.decoding import (
    ForgedMessage,
    MessageRules,
    OversizedMessage,
    decode_message,
)
from brokers.stack import build_stack
from jobkit.errors import BrokerConfigError
from jobkit.settings import current, load_settings
from middleware.message_guard import MessageTooLarge, check_encoder
from middleware.signing import BadSignature, Signer
from tests.conftest import flush, make_broker
from tests.support.processes import wait_until, worker
from tests.test_dead_letters import push_raw

QUEUE = "jobkit-test"
KEY = "k" * 32
OLD_KEY = "o" * 32


def _round_trip(message: Message) -> dict:
    return json.loads(message.encode())


# ---------------------------------------------------------------- no broker


def test_a_signature_survives_the_json_round_trip_and_rotation() -> None:
    message = Message(QUEUE, "job", (1, (2, 3)), {"to": "ada", "n": 1.5}, {})
    message.options["signature"] = Signer([OLD_KEY.encode()]).sign(message.asdict())
    # Still verified once a new key signs and the old one only verifies.
    Signer([KEY.encode(), OLD_KEY.encode()]).verify(_round_trip(message))
    with pytest.raises(BadSignature, match="unknown key"):
        Signer([KEY.encode()]).verify(_round_trip(message))


def test_a_signature_covers_arguments_actor_and_id_but_not_delivery_options() -> None:
    signer = Signer([KEY.encode()])
    message = Message("jobkit-test.DQ", "job", (1,), {"x": 1}, {})
    message.options["signature"] = signer.sign(message.asdict())
    fields = _round_trip(message)
    fields["options"].update(retries=3, eta=123)
    fields["queue_name"] = QUEUE  # moved from the delay queue
    signer.verify(fields)
    for name, value in (("args", [2]), ("kwargs", {"x": 2}), ("actor_name", "other")):
        with pytest.raises(BadSignature, match="does not match"):
            signer.verify({**fields, name: value})
    unsigned = _round_trip(Message(QUEUE, "job", (), {}, {}))
    with pytest.raises(BadSignature, match="not signed"):
        signer.verify(unsigned)


def test_keys_and_limits_are_checked_when_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBKIT_SIGNING_KEY", "short")
    with pytest.raises(BrokerConfigError, match="at least 16 characters"):
        MessageRules.from_settings(current())
    monkeypatch.setenv("JOBKIT_SIGNING_KEY", f"{KEY}, {OLD_KEY}")
    monkeypatch.setenv("JOBKIT_MAX_MESSAGE_BYTES", "lots")
    with pytest.raises(BrokerConfigError, match="JOBKIT_MAX_MESSAGE_BYTES='lots'"):
        MessageRules.from_settings(current())
    monkeypatch.setenv("JOBKIT_MAX_MESSAGE_BYTES", "0")
    rules = MessageRules.from_settings(current())
    assert rules.max_bytes == 0 and rules.signer is not None


def test_consumers_refuse_oversized_and_forged_bytes() -> None:
    rules = MessageRules(max_bytes=200, signer=Signer([KEY.encode()]))
    big = Message(QUEUE, "job", ("x" * 500,), {}, {}).encode()
    with pytest.raises(OversizedMessage, match="over the 200-byte limit") as error:
        decode_message(big, rules)
    assert error.value.reason == "too_large"
    with pytest.raises(ForgedMessage, match="not signed") as forged:
        decode_message(Message(QUEUE, "job", (), {}, {}).encode(), rules)
    assert forged.value.reason == "bad_signature"


def test_a_message_over_the_limit_fails_the_send_and_nothing_is_sent() -> None:
    broker = StubBroker(middleware=build_stack(load_settings({"JOBKIT_MAX_MESSAGE_BYTES": "1000"})))
    actor = dramatiq.actor(lambda data: None, broker=broker, actor_name="upload", queue_name=QUEUE)
    expected = r"job upload to queue 'jobkit-test' is 2,\d{3} bytes, over the 1,000-byte limit"
    with pytest.raises(MessageTooLarge, match=expected):
        actor.send("x" * 2000)
    assert broker.queues[QUEUE].qsize() == 0
    actor.send("x" * 100)
    assert broker.queues[QUEUE].qsize() == 1


def test_the_size_counted_is_dramatiqs_json_with_its_escapes() -> None:
    """600 bytes of UTF-8 are 1,800 of escaped ASCII: the quick bound must not pass them."""
    broker = StubBroker(middleware=build_stack(load_settings({"JOBKIT_MAX_MESSAGE_BYTES": "1000"})))
    actor = dramatiq.actor(lambda data: None, broker=broker, actor_name="upload", queue_name=QUEUE)
    with pytest.raises(MessageTooLarge, match=r"is 2,\d{3} bytes, over the 1,000-byte limit"):
        actor.send("é" * 300)
    with pytest.raises(MessageTooLarge, match="over the 1,000-byte limit"):
        actor.send({1: "x" * 1000})  # non-string keys: counted by Dramatiq's encoder alone
    assert broker.queues[QUEUE].qsize() == 0


@pytest.fixture
def pickle_encoder() -> Iterator[None]:
    dramatiq.set_encoder(PickleEncoder())
    try:
        yield
    finally:
        dramatiq.set_encoder(JSONEncoder())


@pytest.mark.usefixtures("pickle_encoder")
def test_pickle_is_refused_at_start_up_and_at_send() -> None:
    with pytest.raises(BrokerConfigError, match="JSON only, but Dramatiq's encoder is PickleEnc"):
        check_encoder()
    broker = StubBroker(middleware=build_stack())
    actor = dramatiq.actor(lambda: None, broker=broker, actor_name="job", queue_name=QUEUE)
    with pytest.raises(BrokerConfigError, match="remove the dramatiq.set_encoder"):
        actor.send()


# ---------------------------------------------------------------- on every real broker


@pytest.fixture
def guarded_broker(real_broker_kind: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    """A broker whose senders sign and whose consumers check, with a 4 KiB limit."""
    monkeypatch.setenv("JOBKIT_SIGNING_KEY", KEY)
    monkeypatch.setenv("JOBKIT_MAX_MESSAGE_BYTES", "4096")
    broker = make_broker(real_broker_kind)
    dramatiq.set_broker(broker)
    flush(broker)
    try:
        yield broker
    finally:
        flush(broker)
        broker.close()


def test_forged_unsigned_and_oversized_messages_are_dead_lettered_never_run(
    guarded_broker: Broker,
) -> None:
    runs: list[str] = []
    actor = dramatiq.actor(
        runs.append, broker=guarded_broker, actor_name="guarded", queue_name=QUEUE
    )
    actor.send("signed")
    other_key = Signer([OLD_KEY.encode()])
    forged = actor.message("forged")
    forged.options["signature"] = other_key.sign(forged.asdict())
    tampered = actor.message("tampered")
    tampered.options["signature"] = Signer([KEY.encode()]).sign(actor.message("x").asdict())
    unsigned = actor.message("unsigned")
    huge = actor.message("x" * 10_000)
    # On Redis the first body is pushed as a bare id (no body): one `undecodable` more.
    push_raw(guarded_broker, [b"junk", *(m.encode() for m in (forged, tampered, unsigned, huge))])
    store = dead_letter_store(guarded_broker)
    with worker(guarded_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: store.count() == 5 and runs, 20), store.list()
    assert runs == ["signed"]
    reasons = sorted(record["reason"] for record in store.list())
    assert reasons == ["bad_signature"] * 3 + ["too_large", "undecodable"]
    (too_large,) = (r for r in store.list() if r["reason"] == "too_large")
    assert (
        too_large["raw_bytes"] > 10_000 and "over the 4,096-byte limit" in too_large["exc_message"]
    )


def test_a_signed_job_is_retried_and_delayed_and_still_runs(guarded_broker: Broker) -> None:
    attempts: list[int] = []

    def flaky(n: int) -> None:
        attempts.append(n)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    actor = dramatiq.actor(
        flaky, broker=guarded_broker, actor_name="flaky", queue_name=QUEUE, min_backoff=50,
        max_backoff=100,
    )  # fmt: skip
    actor.send_with_options(args=(7,), delay=200)
    with worker(guarded_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: len(attempts) == 2, 20)
    assert attempts == [7, 7] and dead_letter_store(guarded_broker).count() == 0
