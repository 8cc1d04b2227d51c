"""Publisher confirms for bulk sends: a publisher on a channel of its own, in confirm mode,
with a window of unconfirmed messages (used by ``PriorityRabbitmqBroker.enqueue_many``).
"""

from __future__ import annotations

import time
from typing import Any

import pika
from dramatiq import Message

from ..encoding import encode_message
from ..pika_seam import FrameGatherer, channel_impl
from .amqp_priority import NORMAL_PRIORITY


class ConfirmedPublisher:
    """Publishes on a channel of its own in confirm mode, keeping at most ``window`` unconfirmed."""

    def __init__(self, connection: pika.BlockingConnection, window: int) -> None:
        self.connection = connection
        self.channel = channel_impl(connection.channel())  # publishes without waiting
        self.window = max(window, 1)
        self.failure = "not confirmed"
        self.accepted: set[str] = set()
        self._next_tag = 1
        self._pending: dict[int, str] = {}
        self._returned: set[str] = set()
        self._properties: dict[Any, pika.BasicProperties] = {}
        # This connection is the publisher's own: its frames go out in few writes.
        self._frames = FrameGatherer(connection)
        ready: list[bool] = []
        self.channel.add_on_return_callback(self._on_return)
        self.channel.confirm_delivery(self._on_confirm, callback=lambda _frame: ready.append(True))
        self._run_until(lambda: bool(ready), 10.0)

    def release(self) -> None:
        """Write what is gathered and give pika its own writer back (closing frames go out)."""
        self._frames.release()

    def publish(self, message: Message) -> None:
        priority = message.options.get("broker_priority", NORMAL_PRIORITY)
        properties = self._properties.get(priority)
        if properties is None:  # one per level: building them costs more than the JSON
            properties = self._properties[priority] = pika.BasicProperties(
                delivery_mode=2, priority=priority
            )
        self.channel.basic_publish(
            "", message.queue_name, encode_message(message), properties, True
        )
        self._pending[self._next_tag] = message.message_id
        self._next_tag += 1
        if len(self._pending) >= self.window:
            # Let confirms in (and frames out) until half the window is free.
            self._run_until(lambda: len(self._pending) <= self.window // 2, 30.0)

    def wait_all(self, timeout: float) -> None:
        self._run_until(lambda: not self._pending, timeout)
        if self._pending:
            self.failure = f"no confirm within {timeout:.0f} s"
        self.accepted -= self._returned

    def _run_until(self, done: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self._frames.flush()
            # Short slices: the blocking connection does not return early for callbacks
            # of the channel underneath, only when its time limit runs out.
            self.connection.process_data_events(time_limit=0.002)
        self._frames.flush()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        accepted = isinstance(method, pika.spec.Basic.Ack)
        if not accepted:
            self.failure = "the broker nacked them"
        if method.multiple:
            tags = []
            for tag in self._pending:  # in publish order
                if tag > method.delivery_tag:
                    break
                tags.append(tag)
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            message_id = self._pending.pop(tag, None)
            if accepted and message_id is not None:
                self.accepted.add(message_id)

    def _on_return(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        # Rare (the queue was deleted meanwhile): the body says which message came back.
        self.failure = "no queue to route them to"
        self._returned.add(Message.decode(body).message_id)
