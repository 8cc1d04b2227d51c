"""Redis (and embedded Valkey) broker with priority levels; health check and queue depths.

One concept per module:

- ``broker.py``: :class:`PriorityRedisBroker`, its dispatch script
  (``brokers/lua/dispatch.lua``) and its per-level key suffixes
- ``consumer.py``: :class:`PriorityRedisConsumer` (fetches, acks, nacks, requeues)
  and :class:`RedisMessage`
- ``upkeep.py``: :class:`DeadWorkerSweep`, dead-worker recovery every few seconds
- ``checks.py``: :func:`check_redis`, :func:`unsafe_settings` and
  :class:`RedisSettingsCheck`, :func:`is_out_of_memory`
- ``depth_scan.py``: :func:`redis_queue_depths`
- ``build.py``: :func:`build_redis_broker`, the broker with its upkeep middleware

Every public name is re-exported here.
"""

from __future__ import annotations

from .broker import DISPATCH_SCRIPT, LEVEL_SUFFIXES, NAMESPACE, PriorityRedisBroker, level_suffix
from .build import build_redis_broker
from .checks import RedisSettingsCheck, check_redis, is_out_of_memory, unsafe_settings
from .consumer import ACK_FLUSH_TIMEOUT_S, PriorityRedisConsumer, RedisMessage
from .depth_scan import redis_queue_depths
from .upkeep import SWEEP_INTERVAL_S, DeadWorkerSweep, sweep

__all__ = [
    "ACK_FLUSH_TIMEOUT_S",
    "DISPATCH_SCRIPT",
    "LEVEL_SUFFIXES",
    "NAMESPACE",
    "SWEEP_INTERVAL_S",
    "DeadWorkerSweep",
    "PriorityRedisBroker",
    "PriorityRedisConsumer",
    "RedisMessage",
    "RedisSettingsCheck",
    "build_redis_broker",
    "check_redis",
    "is_out_of_memory",
    "level_suffix",
    "redis_queue_depths",
    "sweep",
    "unsafe_settings",
]
