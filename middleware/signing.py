"""Message signing: an HMAC over what a job is, so workers run only jobs jobkit sent.

With ``JOBKIT_SIGNING_KEY`` set, every message sent gets
``options["signature"] = "<key id>:<HMAC-SHA256 hex>"`` over its id, actor,
queue, arguments and timestamp (not its options, which retries and deferrals
change). A consumer with a key checks it before decoding the job any further:
an unsigned message, or one whose signature does not match, is dead-lettered
with reason ``bad_signature`` and never run.

Rotation: the variable holds one key or several separated by commas. The
first signs; every one verifies. Add the new key in front everywhere, wait for
messages signed with the old one to drain, then drop the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from dramatiq.common import q_name

from jobkit.errors import BrokerConfigError, JobkitError

SIGNING_KEY_ENV = "JOBKIT_SIGNING_KEY"
SIGNATURE = "signature"
MIN_KEY_LENGTH = 16


class BadSignature(JobkitError, ValueError):
    """A message is unsigned, or its signature matches none of the keys."""


class Signer:
    """Signs with the first key, verifies with any (see the module docstring)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise BrokerConfigError(f"{SIGNING_KEY_ENV} is set but holds no key")
        for key in keys:
            if len(key) < MIN_KEY_LENGTH:
                raise BrokerConfigError(
                    f"{SIGNING_KEY_ENV}: every key needs at least {MIN_KEY_LENGTH} characters"
                )
        self._keys = {_key_id(key): key for key in keys}
        self._signing_id = _key_id(keys[0])

    def sign(self, fields: dict[str, Any]) -> str:
        return f"{self._signing_id}:{self._digest(self._keys[self._signing_id], fields)}"

    def verify(self, fields: dict[str, Any]) -> None:
        """Raise :class:`BadSignature` unless ``fields`` (a decoded message) is signed by a key."""
        options = fields.get("options")
        signature = options.get(SIGNATURE) if isinstance(options, dict) else None
        if not isinstance(signature, str) or ":" not in signature:
            raise BadSignature("the message is not signed (JOBKIT_SIGNING_KEY is set here)")
        key_id, _, digest = signature.partition(":")
        key = self._keys.get(key_id)
        if key is None:
            raise BadSignature(f"the message is signed with an unknown key {key_id!r}")
        if not hmac.compare_digest(digest, self._digest(key, fields)):
            raise BadSignature("the signature does not match the message (altered or forged)")

    @staticmethod
    def _digest(key: bytes, fields: dict[str, Any]) -> str:
        # The same bytes before and after a JSON round trip: lists for tuples, sorted keys.
        signed = json.dumps(
            [
                fields.get("message_id"),
                fields.get("actor_name"),
                q_name(str(fields.get("queue_name"))),
                list(fields.get("args") or ()),
                fields.get("kwargs") or {},
                fields.get("message_timestamp"),
            ],
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hmac.new(key, signed.encode(), hashlib.sha256).hexdigest()


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"jobkit-key-id:" + key).hexdigest()[:8]
