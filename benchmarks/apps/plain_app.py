"""``dramatiq benchmarks.apps.plain_app``: stock Dramatiq on the URL in $JOBKIT_BENCH_PLAIN_URL."""

import os

import dramatiq

from benchmarks.plain import plain_broker
from benchmarks.workload import declare

broker = plain_broker(os.environ["JOBKIT_BENCH_PLAIN_URL"])
dramatiq.set_broker(broker)
bench = declare(broker, jobkit=False)
