"""Every shipped actor returns nothing: no value is dropped, and Dramatiq never warns about one.

With no results backend, Dramatiq drops a value an actor returns and logs a WARNING
("returned a value ... Results middleware") on every run: once a minute for the
periodic queue snapshot. What a shipped job finds is logged or written instead.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Broker

import actors
from actors.periodic import daily_summary, purge_old_dead_letters, snapshot_queue_depths
from actors.scraping import scrape_page
from tests.support.processes import wait_until, worker
from tests.support.shipped import QUEUE, redeclare
from tests.test_scraping import Site, page

DROPPED = "returned a value that is not None"


def test_every_shipped_actor_is_declared_to_return_none() -> None:
    """mypy holds each body to its annotation; this holds each actor to ``-> None``."""
    returning = {
        name: inspect.signature(actor.fn).return_annotation
        for name, actor in actors.broker.actors.items()
        if inspect.signature(actor.fn).return_annotation not in (None, "None")
    }
    assert returning == {}


def test_the_shipped_jobs_run_without_a_dropped_value(
    system_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = Site()
    site.routes["/"] = page("Home", "/about")
    done: list[str] = []
    lock = threading.Lock()

    def counted(shipped: dramatiq.Actor) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return shipped.fn(*args, **kwargs)  # what the shipped function returns
            finally:
                with lock:
                    done.append(shipped.actor_name)

        return run

    jobs = {
        shipped.actor_name: redeclare(shipped, system_broker, counted(shipped), rate_limit="50/s")
        if shipped is scrape_page
        else redeclare(shipped, system_broker, counted(shipped))
        for shipped in (snapshot_queue_depths, purge_old_dead_letters, daily_summary, scrape_page)
    }
    caplog.set_level(logging.WARNING, logger="dramatiq")
    try:
        jobs["snapshot_queue_depths"].send()
        jobs["purge_old_dead_letters"].send()
        jobs["daily_summary"].send(str(tmp_path))
        jobs["scrape_page"].send(site.url("/"), str(tmp_path / "page.json"), 5)
        with worker(system_broker, queues={QUEUE}):
            assert wait_until(lambda: len(done) == 4, timeout=30), done
    finally:
        site.close()
    assert (tmp_path / "page.json").exists() and list(tmp_path.glob("daily-*.json"))
    assert [r.getMessage() for r in caplog.records if DROPPED in r.getMessage()] == []
