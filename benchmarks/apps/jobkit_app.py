"""``dramatiq benchmarks.apps.jobkit_app``: jobkit's broker and full middleware stack.

``$JOBKIT_BENCH_WITHOUT`` (comma-separated middleware class names) removes
middleware before any actor is declared, to measure what one of them costs.
"""

import os

from benchmarks.workload import declare
from brokers import setup_broker

broker = setup_broker()
_without = {name.strip() for name in os.environ.get("JOBKIT_BENCH_WITHOUT", "").split(",")}
broker.middleware[:] = [m for m in broker.middleware if type(m).__name__ not in _without]
bench = declare(broker, jobkit=True)
