"""``dramatiq benchmarks.apps.jobkit_app``: jobkit's broker and full middleware stack."""

from benchmarks.workload import declare
from brokers import setup_broker

broker = setup_broker()
bench = declare(broker, jobkit=True)
