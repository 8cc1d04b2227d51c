"""Redis clients that never wait forever: every socket has a timeout.

redis-py's defaults have none: a worker thread reading from a connection whose
server vanished without closing it (a network partition, a paused VM) waits
until the kernel gives up, which can be hours. jobkit's clients give up after
``SOCKET_TIMEOUT_S``, send TCP keepalives, and check a connection idle for
``HEALTH_CHECK_INTERVAL_S`` before using it. Query parameters in the URL
(``?socket_timeout=30``) override these defaults.
"""

from __future__ import annotations

from typing import Any

import redis

#: No jobkit command blocks on the server; a reply slower than this means a dead link.
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
HEALTH_CHECK_INTERVAL_S = 30


def redis_client(url: str) -> redis.Redis:
    """A client for ``url`` (redis://, rediss:// or unix://) with jobkit's timeouts."""
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    if not url.lower().startswith("unix://"):  # keepalive is TCP's
        options["socket_keepalive"] = True
    pool = redis.ConnectionPool.from_url(url, **options)
    return redis.Redis(connection_pool=pool)
