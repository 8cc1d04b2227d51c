"""Page scraping against a local site: results, robots.txt, retries, rejections, per-host limits."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
from dramatiq import Broker
from dramatiq.errors import Retry

from actors import scraping
from actors.scraping import (
    MAX_LINKS,
    ScrapeRejected,
    ScrapeUnavailable,
    check_robots,
    decode,
    extract,
    host_key,
    resolve_links,
    scrape,
    scrape_page,
    write_json_atomically,
)
from brokers.dead_letter_store import dead_letter_store
from jobkit.errors import SettingsError
from tests.support.processes import wait_until, worker
from tests.support.shipped import redeclare

QUEUE = "jobkit-test"
HTML = "text/html; charset=utf-8"


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    body: bytes = b""
    content_type: str | None = HTML
    headers: dict[str, str] = field(default_factory=dict)
    content_length: bool = True  # without it the body ends when the connection closes
    delay_s: float = 0.0


def page(title: str, *hrefs: str, base: str | None = None) -> Reply:
    head = f"<title>{title}</title>" + (f'<base href="{base}">' if base else "")
    links = "".join(f'<a href="{href}">{n}</a>' for n, href in enumerate(hrefs))
    return Reply(body=f"<html><head>{head}</head><body>{links}</body></html>".encode())


@dataclass
class Hit:
    host: str
    path: str
    at: float  # time.monotonic()


class Site:
    """A local web site: answers GETs from ``routes`` (a list is a script, its last reply sticks).

    Unknown paths (robots.txt included, unless routed) get a 404. Records every request
    with the host it was addressed to, so 127.0.0.1 and localhost are two sites.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Reply | list[Reply]] = {}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                host = self.headers.get("Host", "").rsplit(":", 1)[0]
                with site.lock:
                    site.hits.append(Hit(host, self.path, time.monotonic()))
                    route = site.routes.get(self.path, Reply(404, b"not found", "text/plain"))
                    if isinstance(route, list):
                        route = route.pop(0) if len(route) > 1 else route[0]
                time.sleep(route.delay_s)
                try:
                    self.send_response(route.status)
                    if route.content_type:
                        self.send_header("Content-Type", route.content_type)
                    for name, value in route.headers.items():
                        self.send_header(name, value)
                    if route.content_length:
                        self.send_header("Content-Length", str(len(route.body)))
                    self.end_headers()
                    for start in range(0, len(route.body), 4096):
                        self.wfile.write(route.body[start : start + 4096])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the scraper hung up: a timeout or a body over the cap

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.server_port}{path}"

    def requests_for(self, path: str, host: str | None = None) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path and host in (None, h.host)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    running = Site()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(autouse=True)
def fresh_robots_cache() -> Iterator[None]:
    scraping.clear_robots_cache()
    yield
    scraping.clear_robots_cache()


def declare(broker: Broker, rate_limit: str = "50/s") -> dramatiq.Actor:
    return redeclare(scrape_page, broker, rate_limit=rate_limit)


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- pure functions


def test_the_parser_finds_the_title_and_resolves_links_against_base() -> None:
    html = """<html><head><title>
        Fish &amp;   chips </title><title>second</title></head><body>
      <a href="menu.html#starters">menu</a>
      <a href="menu.html">menu again (same after the fragment goes)</a>
      <a href="/about">about</a>
      <a href="//cdn.example.org/x.html">protocol-relative</a>
      <a href="https://other.example.com/?q=1">absolute</a>
      <a href="mailto:chef@example.com">mail</a> <a href="javascript:void(0)">js</a>
      <a href="#top">this page</a> <a>no href</a> <a href="http://[::1">broken</a>
      <base href="https://static.example.com/en/">
    </body></html>"""
    title, links = extract(html, "http://example.com/shop/index.html")
    assert title == "Fish & chips"
    assert links == [  # the <base>, even late in the page, applies to every link
        "https://static.example.com/en/menu.html",
        "https://static.example.com/about",
        "https://cdn.example.org/x.html",  # scheme-relative: the base's https
        "https://other.example.com/?q=1",
        "https://static.example.com/en/",
    ]


def test_without_base_links_resolve_against_the_page_and_title_may_be_missing() -> None:
    title, links = extract('<p><a href="b/c">x</a><A HREF="../d">y</A>', "http://h.test/a/")
    assert title is None
    assert links == ["http://h.test/a/b/c", "http://h.test/d"]
    assert extract("<title></title>", "http://h.test/")[0] == ""


def test_links_are_capped_at_max_links() -> None:
    hrefs = [f"/p{n}" for n in range(MAX_LINKS + 500)]
    links = resolve_links(hrefs, "http://h.test/")
    assert len(links) == MAX_LINKS and links[-1] == f"http://h.test/p{MAX_LINKS - 1}"
    # A javascript: base is ignored, as browsers do.
    assert resolve_links(["x"], "http://h.test/a/", "javascript:alert(1)") == ["http://h.test/a/x"]


def test_the_rate_limit_key_is_the_lower_case_host() -> None:
    assert host_key(("HTTP://WWW.Example.COM:8080/x?y",), {}) == "www.example.com"
    assert host_key((), {"url": "https://Example.com./"}) == "example.com"
    assert host_key(("http://127.0.0.1:9/",), {"timeout_s": 1}) == "127.0.0.1"
    assert host_key(("http://[::1",), {}) == "" and host_key((), {}) == ""
    assert scrape_page.queue_name == "scraping"
    assert scrape_page.options["rate_limit"] == "1/s"
    assert scrape_page.options["rate_limit_key"] is host_key
    assert issubclass(ScrapeRejected, scrape_page.options["throws"])


def test_bodies_decode_with_the_response_charset_then_meta_then_utf8() -> None:
    assert decode("café".encode("latin-1"), "iso-8859-1") == "café"
    sniffed = '<meta charset="windows-1252"><p>café'.encode("cp1252")
    assert decode(sniffed, None).endswith("café")
    assert decode("café".encode(), "no-such-charset") == "café"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://example.com/a"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    monkeypatch.delenv("JOBKIT_SCRAPE_DIR", raising=False)
    assert scraping.default_output(url) == Path(".jobkit/scraped") / f"{digest}.json"
    monkeypatch.setenv("JOBKIT_SCRAPE_DIR", "/srv/pages")
    assert scraping.default_output(url) == Path("/srv/pages") / f"{digest}.json"
    monkeypatch.delenv("JOBKIT_SCRAPE_MAX_BYTES", raising=False)
    assert scraping.max_bytes() == 5_000_000
    monkeypatch.setenv("JOBKIT_SCRAPE_MAX_BYTES", "1_000")
    assert scraping.max_bytes() == 1000
    monkeypatch.setenv("JOBKIT_SCRAPE_MAX_BYTES", "5MB")
    with pytest.raises(SettingsError, match="JOBKIT_SCRAPE_MAX_BYTES='5MB'"):
        scraping.max_bytes()
    monkeypatch.delenv("JOBKIT_SCRAPE_MAX_BYTES")  # every setting is read at once: fix it first
    monkeypatch.setenv("JOBKIT_SCRAPE_USER_AGENT", "acme-bot/2")
    assert scraping.user_agent() == "acme-bot/2"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json_atomically(target, {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomically(target, {"v": object()})  # fails half-way through the dump
    assert read(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# ---------------------------------------------------------------- the job, called directly


def test_redirects_are_followed_and_links_resolve_against_the_final_url(
    site: Site, tmp_path: Path
) -> None:
    site.routes["/old"] = Reply(301, headers={"Location": "/new/"}, content_type=None)
    site.routes["/new/"] = page("Moved", "child")
    result = scrape(site.url("/old"), str(tmp_path / "r.json"), timeout_s=5)
    assert result["final_url"] == site.url("/new/") and result["url"] == site.url("/old")
    assert result["links"] == [site.url("/new/child")]
    assert read(tmp_path / "r.json") == result
    assert len(site.requests_for("/robots.txt")) == 1  # cached for the second hop


def test_a_redirect_into_a_disallowed_path_is_never_followed(site: Site, tmp_path: Path) -> None:
    site.routes["/robots.txt"] = Reply(body=b"User-agent: *\nDisallow: /private\n")
    site.routes["/open"] = Reply(302, headers={"Location": "/private/x"}, content_type=None)
    with pytest.raises(ScrapeRejected, match=r"disallows /private/x for jobkit-scraper/1"):
        scrape_page.fn(site.url("/open"), str(tmp_path / "r.json"), timeout_s=5)
    assert site.requests_for("/private/x") == []


def test_more_than_five_redirects_are_rejected(site: Site) -> None:
    for n in range(10):
        site.routes[f"/r{n}"] = Reply(302, headers={"Location": f"/r{n + 1}"}, content_type=None)
    with pytest.raises(ScrapeRejected, match="more than 5 redirects"):
        scrape_page.fn(site.url("/r0"), timeout_s=5)
    assert len(site.requests_for("/r5")) == 1 and site.requests_for("/r6") == []


def test_robots_txt_failures_are_transient_and_missing_robots_allow_all(site: Site) -> None:
    site.routes["/robots.txt"] = [Reply(503), Reply(200, b"", "text/plain", delay_s=1.0)]
    with pytest.raises(ScrapeUnavailable, match=r"robots.txt: HTTP 503"):
        scrape_page.fn(site.url("/p"), timeout_s=5)
    with pytest.raises(ScrapeUnavailable, match=r"robots.txt: no answer within 0.3 s"):
        scrape_page.fn(site.url("/p"), timeout_s=0.3)
    assert site.requests_for("/p") == []
    # 4xx: no rules, everything allowed (and remembered for the origin).
    site.routes["/robots.txt"] = Reply(410)
    agent = "jobkit-scraper/1"
    with httpx.Client(timeout=5) as client:
        check_robots(client, site.url("/p"), agent)
        check_robots(client, site.url("/q"), agent)
    assert len(site.requests_for("/robots.txt")) == 3


def test_robots_rules_name_the_agent_and_apply_per_origin(site: Site) -> None:
    site.routes["/robots.txt"] = Reply(
        body=b"User-agent: jobkit-scraper\nDisallow: /no\n\nUser-agent: *\nDisallow: /\n",
        content_type="text/plain",
    )
    with httpx.Client(timeout=5) as client:
        check_robots(client, site.url("/yes"), "jobkit-scraper/1")
        with pytest.raises(ScrapeRejected) as caught:
            check_robots(client, site.url("/no?page=2"), "jobkit-scraper/1")
        with pytest.raises(ScrapeRejected, match="disallows /yes for other-bot/1"):
            check_robots(client, site.url("/yes"), "other-bot/1")
    origin = f"http://127.0.0.1:{site.server.server_port}"
    assert str(caught.value) == f"robots.txt of {origin} disallows /no?page=2 for jobkit-scraper/1"


def test_status_codes_map_to_retry_retry_after_or_rejection(site: Site) -> None:
    site.routes["/busy"] = Reply(429, headers={"Retry-After": "2"})
    site.routes["/down"] = Reply(502)
    site.routes["/gone"] = Reply(410)
    site.routes["/slow"] = Reply(200, b"<title>late</title>", delay_s=1.0)
    with pytest.raises(Retry) as retry:
        scrape_page.fn(site.url("/busy"), timeout_s=5)
    assert retry.value.delay == 2000
    with pytest.raises(ScrapeUnavailable, match=r"/down: HTTP 502"):
        scrape_page.fn(site.url("/down"), timeout_s=5)
    with pytest.raises(ScrapeRejected, match=r"/gone: HTTP 410"):
        scrape_page.fn(site.url("/gone"), timeout_s=5)
    with pytest.raises(ScrapeUnavailable, match=r"/slow: no answer within 0.3 s"):
        scrape_page.fn(site.url("/slow"), timeout_s=0.3)


def test_bad_urls_are_rejected_with_credentials_masked(site: Site) -> None:
    for bad in ("ftp://example.com/x", "http:///nohost", "example.com/x", "http://h:port/"):
        with pytest.raises(ScrapeRejected, match="must be http:// or https:// with a host"):
            scrape_page.fn(bad)
    secret = site.url("/missing").replace("http://", "http://bob:hunter2@")
    with pytest.raises(ScrapeRejected) as caught:
        scrape_page.fn(secret, timeout_s=5)
    assert "bob:***@" in str(caught.value) and "hunter2" not in str(caught.value)


def test_a_declared_length_over_the_cap_is_refused_before_reading(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBKIT_SCRAPE_MAX_BYTES", "1000")
    site.routes["/big"] = Reply(body=b"<p>" + b"x" * 5000)
    with pytest.raises(ScrapeRejected, match="5003 bytes is over JOBKIT_SCRAPE_MAX_BYTES=1000"):
        scrape_page.fn(site.url("/big"), timeout_s=5)


def test_results_go_to_the_scrape_dir_by_default_decoded_with_the_charset(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobkit.scraping")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JOBKIT_SCRAPE_DIR", raising=False)
    site.routes["/"] = Reply(
        body="<title>Crème brûlée</title>".encode("latin-1"),
        content_type="application/xhtml+xml; charset=ISO-8859-1",
    )
    url = site.url("/")
    result = scrape(url, timeout_s=5)
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    assert read(tmp_path / ".jobkit" / "scraped" / f"{digest}.json") == result
    assert result["title"] == "Crème brûlée" and result["bytes"] == 27
    (line,) = [r.getMessage() for r in caplog.records if r.name == "jobkit.scraping"]
    assert line.startswith(f"scraped {url}: HTTP 200, 27 bytes, 0 links -> ")


# ---------------------------------------------------------------- on real brokers


def test_a_page_is_scraped_and_its_result_written(
    system_broker: Broker, site: Site, tmp_path: Path
) -> None:
    site.routes["/robots.txt"] = Reply(body=b"User-agent: *\nDisallow: /admin\n")
    site.routes["/docs/index.html"] = page(
        "  The  Docs ", "intro.html#top", "/admin", "intro.html", "mailto:x@y", base="/v2/"
    )
    out = tmp_path / "results" / "docs.json"
    out.parent.mkdir()
    out.write_text("stale")
    actor = declare(system_broker)
    before = time.time()
    actor.send(site.url("/docs/index.html"), str(out), 5.0)
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: out.read_text() != "stale", 30)
    result = read(out)
    assert result["url"] == result["final_url"] == site.url("/docs/index.html")
    assert result["status"] == 200 and result["title"] == "The Docs"
    assert result["links"] == [site.url("/v2/intro.html"), site.url("/admin")]
    assert result["bytes"] == len(site.routes["/docs/index.html"].body)
    fetched = datetime.fromisoformat(result["fetched_at"])
    assert fetched.utcoffset() == timedelta(0) and before - 1 <= fetched.timestamp() <= time.time()
    assert [p.name for p in out.parent.iterdir()] == ["docs.json"]  # no temporary left behind
    assert len(site.requests_for("/docs/index.html")) == 1
    assert site.requests_for("/docs/index.html")[0].at > site.requests_for("/robots.txt")[0].at
    assert dead_letter_store(system_broker).count() == 0


def test_a_server_error_is_retried_until_the_page_comes(
    system_broker: Broker, site: Site, tmp_path: Path
) -> None:
    site.routes["/flaky"] = [Reply(503, b"later", "text/plain"), page("Back")]
    out = tmp_path / "flaky.json"
    actor = declare(system_broker)
    actor.send(site.url("/flaky"), str(out), 5.0)
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(out.exists, 30)
        time.sleep(0.3)
    assert read(out)["title"] == "Back"
    assert len(site.requests_for("/flaky")) == 2
    assert dead_letter_store(system_broker).count() == 0


@pytest.mark.parametrize("case", ["not_found", "robots", "too_large", "not_html"])
def test_a_page_that_cannot_be_scraped_is_dead_lettered_at_once(
    system_broker: Broker, site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    path = "/private/page" if case == "robots" else "/page"
    origin = f"http://127.0.0.1:{site.server.server_port}"
    expected = {
        "not_found": f"GET {origin}/page: HTTP 404 Not Found",
        "robots": f"robots.txt of {origin} disallows /private/page for jobkit-scraper/1",
        "too_large": f"GET {origin}/page: body is over JOBKIT_SCRAPE_MAX_BYTES=1000 bytes",
        "not_html": f"GET {origin}/page: not HTML (Content-Type 'application/json')",
    }[case]
    if case == "robots":
        site.routes["/robots.txt"] = Reply(body=b"User-agent: *\nDisallow: /private/\n")
        site.routes[path] = page("secret")
    elif case == "too_large":
        monkeypatch.setenv("JOBKIT_SCRAPE_MAX_BYTES", "1000")
        # No Content-Length: the cap must stop the stream itself.
        site.routes[path] = Reply(body=b"<p>" + b"x" * 50_000, content_length=False)
    elif case == "not_html":
        site.routes[path] = Reply(body=b"{}", content_type="application/json")
    out = tmp_path / "never.json"
    actor = declare(system_broker)
    message = actor.send(site.url(path), str(out), 5.0)
    store = dead_letter_store(system_broker)
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: store.count() == 1, 30)
        time.sleep(0.3)
    record = store.get(message.message_id)
    assert record["reason"] == "non_retryable" and record["attempts"] == 1
    assert record["exc_type"] == "ScrapeRejected"
    assert record["exc_message"] == expected
    assert len(site.requests_for(path)) == (0 if case == "robots" else 1)
    assert not out.exists()


def test_pages_of_one_host_are_spaced_by_its_rate_limit_and_other_hosts_are_not_held(
    system_broker: Broker, site: Site, tmp_path: Path
) -> None:
    site.routes["/page"] = page("paced")
    actor = declare(system_broker, rate_limit="4/s")  # one page every 250 ms per host
    with httpx.Client(timeout=5) as client:  # robots.txt read up front: only pages are timed
        for host in ("127.0.0.1", "localhost"):
            check_robots(client, site.url("/page", host), "jobkit-scraper/1")
    for n in range(3):
        actor.send(site.url("/page"), str(tmp_path / f"a{n}.json"), 5.0)
    actor.send(site.url("/page", "localhost"), str(tmp_path / "b.json"), 5.0)
    # One thread: jobs started at once would fight over the GIL, adding noise to the timings.
    # A deferred job is off the thread while it waits, so it holds up no other host.
    with worker(system_broker, threads=1, queues={QUEUE}):
        assert wait_until(lambda: len(list(tmp_path.glob("*.json"))) == 4, 60)
    paced = [hit.at for hit in site.requests_for("/page", "127.0.0.1")]
    (other,) = [hit.at for hit in site.requests_for("/page", "localhost")]
    assert len(paced) == 3
    gaps = [later - earlier for earlier, later in zip(paced, paced[1:], strict=False)]
    # Slots are 250 ms apart: three pages span at least two. A job that comes back late in
    # its slot leaves less of a gap before the next one (the limiter keeps the schedule, not
    # the gaps; 176 ms late on a loaded run), so the gaps only rule out two pages at once.
    assert paced[-1] - paced[0] >= 0.45 and min(gaps) >= 0.05, gaps
    # Sharing 127.0.0.1's limit, it would have had the slot after the third (750 ms).
    assert other < paced[-1], "the localhost page waited for 127.0.0.1's slots"
    assert dead_letter_store(system_broker).count() == 0
