"""Send many messages at once, with the guarantee of one confirmed send each.

``send_many(messages)`` runs every message through the middleware's
``before_enqueue`` (priorities, validation) as ``send`` does, then hands the
broker whole batches: a Redis pipeline of enqueue scripts (one round trip per
batch), or on RabbitMQ a batch of publishes followed by one wait for all their
publisher confirms (instead of one round trip per message). When it returns,
the broker has accepted every message; otherwise it raises
:class:`BulkSendError`, whose ``not_sent`` lists the messages the broker did
not confirm (everything else was accepted).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import dramatiq
from dramatiq import Broker, Message

from jobkit.errors import JobkitError

DEFAULT_BATCH = 1000


class BulkSendError(JobkitError):
    """Some messages were not confirmed by the broker; ``not_sent`` names them."""

    def __init__(self, reason: str, not_sent: list[Message], sent: list[Message]) -> None:
        self.not_sent = not_sent
        self.sent = sent
        ids = ", ".join(m.message_id for m in not_sent[:5])
        more = f" and {len(not_sent) - 5} more" if len(not_sent) > 5 else ""
        super().__init__(
            f"{len(not_sent)} of {len(not_sent) + len(sent)} messages were not confirmed by the "
            f"broker ({reason}): {ids}{more}; the others were accepted"
        )


def send_many(
    messages: Iterable[Message | dramatiq.group],
    *,
    broker: Broker | None = None,
    delay: int | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> list[Message]:
    """Enqueue ``messages`` (``actor.message(...)``, or groups of them); the messages as sent.

    All go to ``broker`` (default: Dramatiq's global broker), each to its own
    queue, with ``delay`` ms if given. Raises :class:`BulkSendError` naming
    the messages the broker did not accept.
    """
    broker = broker or dramatiq.get_broker()
    flat = list(_flatten(messages))
    enqueue_many = getattr(broker, "enqueue_many", None)
    if enqueue_many is not None:
        return enqueue_many(flat, delay=delay, batch_size=batch_size)
    sent: list[Message] = []
    for index, message in enumerate(flat):
        try:
            sent.append(broker.enqueue(message, delay=delay))
        except Exception as error:
            raise BulkSendError(str(error), flat[index:], sent) from error
    return sent


def _flatten(items: Iterable[Any]) -> Iterator[Message]:
    for item in items:
        if isinstance(item, Message):
            yield item
        elif isinstance(item, dramatiq.group):
            for child in item.children:
                if not isinstance(child, Message):
                    raise TypeError("send_many takes groups of messages, not of pipelines")
                yield child
        else:
            raise TypeError(f"send_many takes messages (actor.message(...)), not {item!r}")


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + size]
