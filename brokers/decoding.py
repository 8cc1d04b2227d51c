"""Decode a message from the bytes a consumer fetched, refusing anything that is not one.

Dramatiq's ``Message.decode`` accepts any JSON object whose keys match its
fields, whatever their types: ``{"args": "abc", ...}`` would run the actor
with three arguments, and ``{"options": []}`` would break every middleware.
Consumers use :func:`decode_message` so such bytes are dead-lettered as
``undecodable`` instead.
"""

from __future__ import annotations

from dramatiq import Message, get_encoder

from jobkit.errors import JobkitError
from middleware.message_guard import MAX_BYTES_ENV, MessageRules
from middleware.signing import BadSignature

#: Field -> the types a well-formed message has there (as JSON decodes them).
_SHAPE: dict[str, tuple[type, ...]] = {
    "queue_name": (str,),
    "actor_name": (str,),
    "args": (list, tuple),
    "kwargs": (dict,),
    "options": (dict,),
    "message_id": (str,),
    "message_timestamp": (int,),
}


class UndecodableMessage(JobkitError, ValueError):
    """The bytes are not a message to run; ``str()`` says why in one line."""

    #: The dead-letter reason.
    reason = "undecodable"


class OversizedMessage(UndecodableMessage):
    reason = "too_large"


class ForgedMessage(UndecodableMessage):
    reason = "bad_signature"


def decode_message(data: bytes | None, rules: MessageRules | None = None) -> Message:
    """The message in ``data``; raises :class:`UndecodableMessage` saying why it is not one."""
    if data is None:
        raise UndecodableMessage("the queue held an id with no message body")
    if rules is not None and rules.max_bytes and len(data) > rules.max_bytes:
        raise OversizedMessage(
            f"{len(data):,} bytes, over the {rules.max_bytes:,}-byte limit ({MAX_BYTES_ENV})"
        )
    try:
        fields = get_encoder().decode(data)
    except Exception as error:  # noqa: BLE001 - whatever the encoder raises, it is not a message
        raise UndecodableMessage(f"not a Dramatiq message: {_first_line(error)}") from None
    if not isinstance(fields, dict):
        kind = type(fields).__name__
        raise UndecodableMessage(f"not a Dramatiq message: a {kind}, not an object")
    for name, types in _SHAPE.items():
        if name not in fields and name in ("message_id", "message_timestamp"):
            continue  # Dramatiq fills these in
        value = fields.get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise UndecodableMessage(
                f"field {name!r} is {type(value).__name__}, expected "
                + " or ".join(t.__name__ for t in types)
            )
    if rules is not None and rules.signer is not None:
        try:
            rules.signer.verify(fields)
        except BadSignature as error:
            raise ForgedMessage(str(error)) from None
    try:
        return Message(**{**fields, "args": tuple(fields["args"])})
    except TypeError as error:
        raise UndecodableMessage(f"not a Dramatiq message: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text.splitlines()[0]}"
