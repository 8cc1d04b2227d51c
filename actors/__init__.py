"""jobkit's jobs. ``import actors`` is all app code needs before ``some_job.send(...)``.

The broker (from ``JOBKIT_BROKER_URL``, embedded by default) and its whole
middleware stack are set up first, because Dramatiq binds actors to the
global broker and checks their options when they are declared. Then each job
family's module is imported. ``dramatiq actors`` loads the same package.
"""

from brokers import setup_broker

broker = setup_broker()

from actors import basics, demo, reports, webhooks  # noqa: E402 - the broker must exist first
from actors.basics import ping, sleep_ms  # noqa: E402
from actors.reports import build_report  # noqa: E402
from actors.webhooks import deliver_webhook, send_webhook  # noqa: E402

__all__ = [
    "basics",
    "broker",
    "build_report",
    "deliver_webhook",
    "demo",
    "ping",
    "reports",
    "send_webhook",
    "sleep_ms",
    "webhooks",
]
