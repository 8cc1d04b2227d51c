"""Checks each message as it is sent: JSON encoding, size, and (with a key) its signature.

(What a job's arguments may be, and that they fit its actor, ``SendChecks``
checks first: ``middleware.send_checks``.)

- **JSON only.** Dramatiq can be switched to ``PickleEncoder``; unpickling runs
  whatever code the bytes ask for, so anyone who can write to the queue could
  run code on every worker. jobkit refuses to send with another encoder.
- **Size.** A message over ``JOBKIT_MAX_MESSAGE_BYTES`` (1 MiB; ``0`` for no
  limit) fails the send with one line naming the actor; pass a reference (a
  path, a URL, a row id) instead of the data. Consumers apply the same limit
  to what they fetch, and dead-letter a larger one as ``too_large``.
- **Signature.** With ``JOBKIT_SIGNING_KEY``, each message is signed here and
  checked by consumers (``middleware.signing``, ``brokers.decoding``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson
from dramatiq import Broker, Message, Middleware, get_encoder
from dramatiq.encoder import Encoder, JSONEncoder
from dramatiq.middleware import MiddlewareError

from jobkit.errors import BrokerConfigError, JobkitError
from jobkit.settings import Settings

from .send_checks import not_json_error
from .signing import SIGNATURE, Signer

MAX_BYTES_ENV = "JOBKIT_MAX_MESSAGE_BYTES"
DEFAULT_MAX_BYTES = 1024 * 1024
_FIELDS = tuple(field.name for field in dataclasses.fields(Message))


class MessageTooLarge(JobkitError, MiddlewareError, ValueError):
    """A message is over the size limit; it was not sent."""


class UnsafeEncoder(BrokerConfigError, MiddlewareError):
    """Dramatiq's encoder is not JSON."""


def check_encoder() -> None:
    """Refuse any encoder but JSON (see the module docstring)."""
    encoder = get_encoder()
    if not isinstance(encoder, JSONEncoder):
        raise UnsafeEncoder(
            f"jobkit sends JSON only, but Dramatiq's encoder is {type(encoder).__name__}: "
            "a pickled message would run any code its sender chose on every worker; "
            "remove the dramatiq.set_encoder(...) call"
        )


@dataclass(frozen=True)
class MessageRules:
    """What a message must be, at send and at consume: a size limit, and a signature."""

    max_bytes: int = DEFAULT_MAX_BYTES
    signer: Signer | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MessageRules:
        """``JOBKIT_MAX_MESSAGE_BYTES`` and ``JOBKIT_SIGNING_KEY``."""
        keys = settings.signing_key
        signer = Signer([key.encode() for key in keys]) if keys else None
        return cls(max_bytes=settings.max_message_bytes, signer=signer)


def message_fields(message: Message) -> dict[str, Any]:
    """``message.asdict()`` (the same dict, options not copied) without its per-call lookups."""
    return {name: getattr(message, name) for name in _FIELDS}


class MessageGuard(Middleware):
    """Enforces :class:`MessageRules` on every message sent (``before_enqueue``)."""

    def __init__(self, rules: MessageRules | None = None) -> None:
        self.rules = rules or MessageRules()

    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        encoder = get_encoder()
        if type(encoder) is not JSONEncoder:
            check_encoder()
        # One field dict for both: its options are the message's own dict, so the
        # encoded size includes the signature added here.
        fields = message_fields(message)
        signer = self.rules.signer
        if signer is not None:
            message.options[SIGNATURE] = signer.sign(fields)
        limit = self.rules.max_bytes
        if limit:
            try:
                size = _encoded_size(encoder, fields, limit)
            except (TypeError, ValueError, RecursionError):
                # SendChecks refuses this for a send; this is the last word for any other
                # enqueue, as one line rather than Dramatiq's CRITICAL traceback.
                actor = broker.actors.get(message.actor_name)
                raise not_json_error(message, actor.fn if actor is not None else None) from None
            if size > limit:
                raise MessageTooLarge(
                    f"job {message.actor_name} to queue {message.queue_name!r} is {size:,} bytes, "
                    f"over the {limit:,}-byte limit ({MAX_BYTES_ENV}); send a reference to the "
                    "data (a path, a URL, a row id) instead of the data"
                )


def _encoded_size(encoder: Encoder, fields: dict, limit: int) -> int:
    """The size of ``fields`` as ``encoder`` writes it, or 0 when certainly within ``limit``.

    Dramatiq's JSON (ASCII, with every other character escaped to at most 6
    characters per UTF-8 byte) is at most 6 times as long as orjson's UTF-8, which
    takes a tenth of the time: a message under a sixth of the limit needs no exact
    count. What orjson cannot write is counted exactly.
    """
    try:
        if 6 * len(orjson.dumps(fields)) <= limit:
            return 0
    except TypeError:  # orjson.JSONEncodeError included
        pass
    return len(encoder.encode(fields))
