"""Does a broker answer, and how a worker that fetches nothing still shows it is alive."""

from __future__ import annotations

from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from middleware.dramatiq_seam import redis_command

from .rabbitmq.amqp_admin import check_rabbitmq
from .redis.checks import check_redis
from .urls import SPECS, spec_of


def check_broker(broker: Broker) -> None:
    """Raise a one-line :class:`BrokerUnavailable` unless ``broker`` answers."""
    if isinstance(broker, RedisBroker):
        name = spec_of(broker).display_url if broker in SPECS else "the configured Redis"
        check_redis(broker, name)
    elif isinstance(broker, RabbitmqBroker):
        check_rabbitmq(spec_of(broker).url)


def keep_alive(broker: Broker) -> None:
    """Tell the broker this worker is alive while it fetches nothing (e.g. throttled).

    Redis infers liveness from traffic: a worker silent for the heartbeat
    timeout is presumed dead and its unacked jobs are given to others.
    RabbitMQ's connection heartbeats need nothing from us.
    """
    if isinstance(broker, RedisBroker):
        for queue in sorted(broker.get_declared_queues())[:1]:
            redis_command(broker, "qsize")(queue)
