"""jobkit's jobs. ``import actors`` is all app code needs before ``some_job.send(...)``.

The broker (from ``JOBKIT_BROKER_URL``, embedded by default) and its whole
middleware stack are set up first, because Dramatiq binds actors to the
global broker and checks their options when they are declared. Then each job
family's module is imported. ``dramatiq actors`` loads the same package.
"""

from brokers import setup_broker
from jobkit.errors import SettingsError

try:
    broker = setup_broker()
except SettingsError as error:
    # A setting is wrong: the process stops here with the one line that says which and
    # what is accepted (``dramatiq actors``, ``periodiq actors`` and app code alike).
    raise SystemExit(f"jobkit: {error}") from None

from actors import (  # noqa: E402 - the broker must exist first
    basics,
    demo,
    emails,
    images,
    periodic,
    reports,
    scraping,
    webhooks,
)
from actors.basics import ping, sleep_ms  # noqa: E402
from actors.emails import deliver_email, send_email  # noqa: E402
from actors.images import make_thumbnail, resize_image  # noqa: E402
from actors.periodic import daily_summary, purge_old_dead_letters, snapshot_queue_depths  # noqa: E402
from actors.reports import build_report  # noqa: E402
from actors.scraping import scrape_page  # noqa: E402
from actors.webhooks import deliver_webhook, send_webhook  # noqa: E402

__all__ = [
    "basics",
    "broker",
    "build_report",
    "daily_summary",
    "deliver_email",
    "deliver_webhook",
    "demo",
    "emails",
    "images",
    "make_thumbnail",
    "periodic",
    "ping",
    "purge_old_dead_letters",
    "reports",
    "resize_image",
    "scrape_page",
    "scraping",
    "send_email",
    "send_webhook",
    "sleep_ms",
    "snapshot_queue_depths",
    "webhooks",
]
