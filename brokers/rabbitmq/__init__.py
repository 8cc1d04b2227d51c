"""RabbitMQ broker: priorities, safe connection defaults, health check, queue depths.

Priorities use RabbitMQ's own: queues are declared with ``x-max-priority`` and
each message is published with its level's AMQP priority (see
``middleware.priorities.LEVEL_NUMBERS``), so RabbitMQ hands the most urgent
ready message to the next consumer with room. Weighted mode cannot be built on
that and is refused at start-up.

Modules, one concept each: ``amqp_broker`` (the broker and its factory),
``amqp_consumer`` (batched acks, dead letters), ``amqp_confirms`` (the bulk
publisher's confirms), ``amqp_priority`` (AMQP priority numbers and the middleware
that stamps them), ``amqp_connection`` (connection defaults, failure reasons),
``amqp_admin`` (health check, queue depths). Every public name is re-exported here.
"""

from __future__ import annotations

from .amqp_admin import check_rabbitmq, rabbitmq_queue_depths
from .amqp_broker import PriorityRabbitmqBroker, QueueNeedsMigration, build_rabbitmq_broker
from .amqp_confirms import ConfirmedPublisher
from .amqp_connection import CONNECTION_DEFAULTS, error_reason, with_connection_defaults
from .amqp_consumer import DeadLetteringConsumer
from .amqp_priority import MAX_PRIORITY, NORMAL_PRIORITY, AmqpPriority

__all__ = [
    "CONNECTION_DEFAULTS",
    "MAX_PRIORITY",
    "NORMAL_PRIORITY",
    "AmqpPriority",
    "ConfirmedPublisher",
    "DeadLetteringConsumer",
    "PriorityRabbitmqBroker",
    "QueueNeedsMigration",
    "build_rabbitmq_broker",
    "check_rabbitmq",
    "error_reason",
    "rabbitmq_queue_depths",
    "with_connection_defaults",
]
