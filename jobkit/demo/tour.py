"""The jobs the demo sends from app code: every shipped job, some meant to fail."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from brokers import send_many

from .local_site import SHOP_PAGES, LocalSite
from .samples import Samples
from .tracker import Tracker


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


def send_tour(
    jobs: ModuleType,
    tracker: Tracker,
    samples: Samples,
    site: LocalSite,
    out: Outputs,
    *,
    load_jobs: int,
    work_ms: int,
) -> None:
    """Send every job of the tour, in a mix of priorities, and tell ``tracker`` what to expect.

    ``jobs`` is the shipped job package (``actors``), imported by the demo by name.
    """
    demo_job = jobs.demo.demo_job
    send_email, send_webhook, build_report = jobs.send_email, jobs.send_webhook, jobs.build_report
    make_thumbnail, resize_image, scrape_page = (
        jobs.make_thumbnail,
        jobs.resize_image,
        jobs.scrape_page,
    )
    daily_summary, snapshot_queue_depths = jobs.daily_summary, jobs.snapshot_queue_depths

    def track(message, meant_to_fail: bool = False) -> None:  # noqa: ANN001 - a dramatiq Message
        tracker.expect(message.message_id, message.actor_name, meant_to_fail=meant_to_fail)

    # Bulk load, one round trip per batch: a mix of priorities.
    rng = random.Random(7)
    out.done.mkdir(parents=True, exist_ok=True)
    levels = ["high"] * 1 + ["normal"] * 7 + ["low"] * 2
    load = [
        demo_job.message_with_options(
            args=(str(out.done), index, rng.randint(0, max(work_ms, 0))),
            priority=rng.choice(levels),
        )
        for index in range(load_jobs)
    ]
    for message in send_many(load):
        track(message)

    # Critical: customers' webhooks. The receiver fails each first attempt (retried).
    for order in range(1, 5):
        track(
            send_webhook(
                site.url("/hooks/orders"), {"order": order, "status": "paid"}, priority="critical"
            )
        )
    track(send_webhook(site.url("/hooks/gone"), {"order": 0}), meant_to_fail=True)

    # High: emails, rate-limited per domain, so the burst to example.com is spread out.
    for n in range(8):
        track(
            send_email(
                f"customer{n}@example.com",
                f"Order {n} shipped",
                "It is on its way.",
                priority="high",
            )
        )
    for n in range(3):
        track(
            send_email(
                f"ops{n}@example.org", "Nightly digest", "All green.", html="<p>All green.</p>"
            )
        )

    # Normal: thumbnails and social cards; one upload is broken.
    for photo in samples.images:
        track(make_thumbnail.send(str(photo), str(out.thumbs / f"{photo.stem}.webp"), 256))
    for photo in samples.images[:2]:
        track(
            resize_image.send(str(photo), str(out.cards / f"{photo.stem}.jpg"), 1200, 630, "cover")
        )
    track(
        make_thumbnail.send(str(samples.broken_image), str(out.thumbs / "broken.webp")),
        meant_to_fail=True,
    )

    # Normal: a crawl of the local site, rate-limited per host; robots.txt forbids /private/.
    pages = ["/shop/", *(f"/shop/page-{n}.html" for n in range(1, SHOP_PAGES + 1))]
    for path in pages:
        track(scrape_page.send(site.url(path)))
    track(scrape_page.send(site.url("/blog/", host="localhost")))
    track(scrape_page.send(site.url("/private/admin.html")), meant_to_fail=True)

    # Low: the report of every order, and the periodic jobs sent by hand.
    report = out.reports / "orders-by-country"
    track(build_report.send_with_options(
        args=(str(samples.orders), str(report), "country", ["amount"]), priority="low"
    ))  # fmt: skip
    track(daily_summary.send(str(out.reports)))
    track(snapshot_queue_depths.send())
