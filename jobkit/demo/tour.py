"""The jobs the demo sends from app code: every shipped job, some meant to fail."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from email.utils import make_msgid
from pathlib import Path
from types import ModuleType
from typing import Any

from dramatiq import Actor

from brokers import send_many

from .local_site import SHOP_PAGES, LocalSite
from .run_queues import RunQueues
from .samples import Samples
from .tracker import Tracker

#: The demo tours the jobs jobkit ships, whatever ``--app`` other commands use.
SHIPPED_JOBS = "actors"
#: The actors the tour sends (by their names in the shipped package).
TOUR_ACTORS = (
    "demo_job", "deliver_webhook", "deliver_email", "make_thumbnail", "resize_image",
    "scrape_page", "build_report", "daily_summary", "snapshot_queue_depths",
)  # fmt: skip


@dataclass(frozen=True)
class Outputs:
    """Where the demo's jobs write, under one directory."""

    root: Path

    @property
    def thumbs(self) -> Path:
        return self.root / "thumbs"

    @property
    def cards(self) -> Path:
        return self.root / "cards"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def scraped(self) -> Path:
        return self.root / "scraped"

    @property
    def webhooks(self) -> Path:
        return self.root / "webhooks-received.jsonl"

    @property
    def done(self) -> Path:
        return self.root / "load"

    def of_actor(self) -> dict[str, Path]:
        return {
            "make_thumbnail": self.thumbs,
            "resize_image": self.cards,
            "build_report": self.reports,
            "daily_summary": self.reports,
            "deliver_email": self.outbox,
            "scrape_page": self.scraped,
            "deliver_webhook": self.webhooks,
            "demo_job": self.done / "done",
            "snapshot_queue_depths": self.root / "workers.log",
        }


def tour_queues(jobs: ModuleType, queues: RunQueues) -> list[str]:
    """The run's queues for every actor of the tour (what its workers consume)."""
    return sorted({queues.name(_actor(jobs, name).queue_name) for name in TOUR_ACTORS})


def _actor(jobs: ModuleType, name: str) -> Actor[Any, Any]:
    actor: Actor[Any, Any] = jobs.broker.get_actor(name)
    return actor


def send_tour(
    jobs: ModuleType,
    queues: RunQueues,
    tracker: Tracker,
    samples: Samples,
    site: LocalSite,
    out: Outputs,
    *,
    load_jobs: int,
    work_ms: int,
) -> None:
    """Send every job of the tour to the run's ``queues``, in a mix of priorities, and tell
    ``tracker`` what to expect.

    ``jobs`` is the shipped job package (``actors``), imported by the demo by name.
    Messages are built as the actors' ``send`` builds them, then routed to the run's
    queue (:meth:`RunQueues.route`) and enqueued.
    """
    broker = jobs.broker

    def send(
        actor_name: str,
        *args: Any,
        kwargs: dict[str, Any] | None = None,
        meant_to_fail: bool = False,
        **options: Any,
    ) -> None:
        message = _actor(jobs, actor_name).message_with_options(args=args, kwargs=kwargs, **options)
        sent = broker.enqueue(queues.route(message))
        tracker.expect(sent.message_id, sent.actor_name, meant_to_fail=meant_to_fail)

    # Bulk load, one round trip per batch: a mix of priorities.
    rng = random.Random(7)
    out.done.mkdir(parents=True, exist_ok=True)
    levels = ["high"] * 1 + ["normal"] * 7 + ["low"] * 2
    demo_job = _actor(jobs, "demo_job")
    load = [
        queues.route(
            demo_job.message_with_options(
                args=(str(out.done), index, rng.randint(0, max(work_ms, 0))),
                priority=rng.choice(levels),
            )
        )
        for index in range(load_jobs)
    ]
    for message in send_many(load):
        tracker.expect(message.message_id, message.actor_name)

    # Critical: customers' webhooks, each with the idempotency key send_webhook() would
    # give it. The receiver fails each first attempt (retried).
    def webhook(path: str, payload: Any, **options: Any) -> None:
        key = {"idempotency_key": str(uuid.uuid4())}
        send("deliver_webhook", site.url(path), payload, kwargs=key, **options)

    for order in range(1, 5):
        webhook("/hooks/orders", {"order": order, "status": "paid"}, priority="critical")
    webhook("/hooks/gone", {"order": 0}, meant_to_fail=True)

    # High: emails, rate-limited per domain, so the burst to example.com is spread out.
    # Each has its Message-ID from the start, as send_email() gives it, kept on retries.
    def email(to: str, subject: str, body: str, html: str | None = None, **options: Any) -> None:
        kwargs = {"html": html, "message_id": make_msgid(domain="jobkit")}
        send("deliver_email", to, subject, body, kwargs=kwargs, **options)

    for n in range(8):
        to = f"customer{n}@example.com"
        email(to, f"Order {n} shipped", "It is on its way.", priority="high")
    for n in range(3):
        email(f"ops{n}@example.org", "Nightly digest", "All green.", html="<p>All green.</p>")

    # Normal: thumbnails and social cards; one upload is broken.
    for photo in samples.images:
        send("make_thumbnail", str(photo), str(out.thumbs / f"{photo.stem}.webp"), 256)
    for photo in samples.images[:2]:
        send("resize_image", str(photo), str(out.cards / f"{photo.stem}.jpg"), 1200, 630, "cover")
    send(
        "make_thumbnail",
        str(samples.broken_image),
        str(out.thumbs / "broken.webp"),
        meant_to_fail=True,
    )

    # Normal: a crawl of the local site, rate-limited per host; robots.txt forbids /private/.
    pages = ["/shop/", *(f"/shop/page-{n}.html" for n in range(1, SHOP_PAGES + 1))]
    for path in pages:
        send("scrape_page", site.url(path))
    send("scrape_page", site.url("/blog/", host="localhost"))
    send("scrape_page", site.url("/private/admin.html"), meant_to_fail=True)

    # Low: the report of every order, and the periodic jobs sent by hand.
    report = out.reports / "orders-by-country"
    send("build_report", str(samples.orders), str(report), "country", ["amount"], priority="low")
    send("daily_summary", str(out.reports))
    send("snapshot_queue_depths")
