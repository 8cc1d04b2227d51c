"""Stand-in for Dramatiq's ``tests/common.py``, which its sdist leaves out.

Dramatiq's MANIFEST.in ships ``tests/test_*.py`` but not ``tests/common.py``
(nor ``conftest.py``, ``__init__.py`` or ``tests/middleware/``), and the test
modules import their helpers from it. The runner copies this file into the
unpacked tree as ``tests/common.py``. It keeps upstream's names and behaviour
(Dramatiq 2.2.x), with one change: RabbitMQ being down fails the run (the
plugin checks it at session start) instead of skipping tests.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pytest
from dramatiq import Worker
from dramatiq.threading import is_gevent_active


@contextmanager
def worker(*args: Any, **kwargs: Any) -> Iterator[Worker]:
    """A started worker, stopped on exit (upstream's helper)."""
    started = Worker(*args, **kwargs)
    try:
        started.start()
        yield started
    finally:
        started.stop()


skip_in_ci = pytest.mark.skipif(
    os.getenv("APPVEYOR") is not None or os.getenv("GITHUB_ACTION") is not None,
    reason="test skipped in CI",
)
skip_on_windows = pytest.mark.skipif(
    platform.system() == "Windows", reason="test skipped on Windows"
)
skip_on_pypy = pytest.mark.skipif(
    platform.python_implementation() == "PyPy",
    reason="Time limits are not supported under PyPy.",
)
skip_with_gevent = pytest.mark.skipif(
    is_gevent_active(), reason="Behaviour with gevent is different."
)
skip_without_gevent = pytest.mark.skipif(
    not is_gevent_active(), reason="Behaviour without gevent is different."
)
# Upstream skips when RabbitMQ is unreachable; here the session does not start then.
skip_unless_rabbit_mq = pytest.mark.skipif(False, reason="RabbitMQ is unreachable")

RABBITMQ_USERNAME = os.getenv("RABBITMQ_USERNAME", "guest")
RABBITMQ_PASSWORD = os.getenv("RABBITMQ_PASSWORD", "guest")
RABBITMQ_CREDENTIALS = pika.credentials.PlainCredentials(RABBITMQ_USERNAME, RABBITMQ_PASSWORD)
