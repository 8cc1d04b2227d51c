"""RabbitMQ's own priorities: the AMQP priority of each jobkit level, and the middleware
that stamps it on a message (``broker_priority``) for the publish to use.
"""

from __future__ import annotations

from dramatiq import Broker, Message, Middleware

from middleware.priorities import DEFAULT_LEVEL, LEVEL_NUMBERS, message_level

MAX_PRIORITY = max(LEVEL_NUMBERS.values())
#: The AMQP priority of a message that carries no level.
NORMAL_PRIORITY = LEVEL_NUMBERS[DEFAULT_LEVEL]


class AmqpPriority(Middleware):
    """Publishes each message with its level's AMQP priority (read by RabbitmqBroker.enqueue).

    A caller's own ``broker_priority`` is kept: ``Priorities`` (first in the stack)
    has already made it the message's level, or refused it.
    """

    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        # Only with a level: a number stamped on a levelless (normal) message would come
        # back with its retries as if the caller had chosen normal, overriding an actor
        # default the producer did not know. Those are published with NORMAL_PRIORITY.
        if "priority" in message.options:
            message.options["broker_priority"] = LEVEL_NUMBERS[message_level(broker, message)]
