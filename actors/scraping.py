"""Scraping: fetch one web page, keep its title and links as JSON, politely.

    from actors.scraping import scrape_page
    scrape_page.send("https://example.com/news", output_path="/data/news.json")

The result, written atomically (a temporary file, then a rename), is
``{"url", "final_url", "status", "title", "links", "fetched_at", "bytes"}``:
``links`` are the page's ``<a href>`` targets as absolute http(s) URLs (resolved
against the page's final URL and its ``<base href>``, without fragments, each
once, in page order, at most ``MAX_LINKS``). Without ``output_path`` it goes to
``$JOBKIT_SCRAPE_DIR/<first 16 hex digits of sha256(url)>.json``.

Politeness: each host gets at most ``JOBKIT_SCRAPE_RATE_LIMIT`` jobs (``1/s``)
across every worker, and robots.txt is obeyed (fetched once per origin per
process, kept 10 minutes; a missing one allows everything).

Errors: a timeout, connection error, 5xx, 408, 425 or 429 (on the page or its
robots.txt) is retried with backoff, a ``Retry-After`` header setting the next
delay. A page that can never be scraped raises ``ScrapeRejected`` and is
dead-lettered at once (``non_retryable``): a non-http(s) URL, another 4xx, more
than 5 redirects, a body over ``JOBKIT_SCRAPE_MAX_BYTES``, a type other than
HTML, or a URL its robots.txt disallows.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import dramatiq
import httpx
from dramatiq.errors import Retry

from actors.outputs import write_atomically
from actors.webhooks import retry_after_ms
from jobkit.settings import current, mask_url

QUEUE = "scraping"

USER_AGENT_ENV = "JOBKIT_SCRAPE_USER_AGENT"
MAX_BYTES_ENV = "JOBKIT_SCRAPE_MAX_BYTES"
DIR_ENV = "JOBKIT_SCRAPE_DIR"
RATE_LIMIT_ENV = "JOBKIT_SCRAPE_RATE_LIMIT"


MAX_REDIRECTS = 5
#: Most links kept per page (the first ones, in page order).
MAX_LINKS = 1000
#: Longest title kept, in characters (an unclosed <title> would swallow the page).
MAX_TITLE = 1000
ROBOTS_TTL_S = 600.0
#: RFC 9309 asks crawlers to parse at least 500 KiB of a robots.txt; the rest is ignored.
ROBOTS_MAX_BYTES = 512_000
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
#: Statuses worth another attempt: the site is down, slow, or asks us to wait.
RETRYABLE = frozenset({408, 425, 429})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)

logger = logging.getLogger("jobkit.scraping")


class ScrapeRejected(Exception):
    """The page cannot be scraped (bad URL, 4xx, too large, not HTML, robots.txt): not retried."""


class ScrapeUnavailable(Exception):
    """The site failed or could not be reached (5xx, 408, 429, timeout): retried."""


# ---------------------------------------------------------------- settings


def user_agent() -> str:
    """``JOBKIT_SCRAPE_USER_AGENT``: sent with every request and matched against robots.txt."""
    return current().scrape_user_agent


def max_bytes() -> int:
    """``JOBKIT_SCRAPE_MAX_BYTES``: the largest (decompressed) page body read."""
    return current().scrape_max_bytes


def scrape_dir() -> Path:
    """``JOBKIT_SCRAPE_DIR``: where results go by default (relative to the working directory)."""
    return current().scrape_dir


def default_output(url: str) -> Path:
    """``<JOBKIT_SCRAPE_DIR>/<first 16 hex of sha256(url)>.json``: one file per URL as sent."""
    return scrape_dir() / f"{hashlib.sha256(url.encode('utf-8')).hexdigest()[:16]}.json"


#: An actor option, so it is fixed when the actor is declared.
RATE_LIMIT = current().scrape_rate_limit


def host_key(args: tuple, kwargs: dict) -> str:
    """The rate-limit key of a scrape: its URL's lower-case host (``""`` if it has none)."""
    url = kwargs["url"] if "url" in kwargs else (args[0] if args else "")
    try:
        host = urlsplit(str(url)).hostname or ""
    except ValueError:  # runs in middleware before the job: it must not raise
        return ""
    return host.rstrip(".").lower()


# ---------------------------------------------------------------- HTML


class PageParser(HTMLParser):
    """Collects the first ``<title>``'s text, every ``<a href>`` and the first ``<base href>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.base_href: str | None = None
        self._title: list[str] = []
        self._title_chars = 0
        self._in_title = False
        self._title_seen = False

    @property
    def title(self) -> str | None:
        if not self._title_seen:
            return None
        return " ".join("".join(self._title).split())[:MAX_TITLE]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # The first href attribute counts, as in browsers.
        href = next((value for name, value in attrs if name == "href"), None)
        if tag == "a" and href is not None:
            self.hrefs.append(href)
        elif tag == "base" and href is not None and self.base_href is None:
            self.base_href = href
        elif tag == "title" and not self._title_seen:
            self._in_title = self._title_seen = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title and self._title_chars < MAX_TITLE * 4:
            self._title.append(data)
            self._title_chars += len(data)


def resolve_links(
    hrefs: list[str], page_url: str, base_href: str | None = None, limit: int = MAX_LINKS
) -> list[str]:
    """``hrefs`` as absolute http(s) URLs, no fragments, each once, in order, ``limit`` at most."""
    base = page_url
    if base_href is not None and base_href.strip():
        with contextlib.suppress(ValueError):
            candidate = urljoin(page_url, base_href.strip())
            if urlsplit(candidate).scheme in _DEFAULT_PORTS:  # a javascript: base is ignored
                base = candidate
    links: dict[str, None] = {}  # ordered and de-duplicated
    for href in hrefs:
        try:
            link = urldefrag(urljoin(base, href.strip())).url
            parts = urlsplit(link)
            if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
                continue
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            continue
        links[link] = None
        if len(links) >= limit:
            break
    return list(links)


def extract(html: str, page_url: str) -> tuple[str | None, list[str]]:
    """The title (whitespace collapsed; ``None`` without one) and links of a page."""
    parser = PageParser()
    parser.feed(html)
    parser.close()
    return parser.title, resolve_links(parser.hrefs, page_url, parser.base_href)


def decode(body: bytes, charset: str | None) -> str:
    """Text of ``body``: the header's charset, else a ``<meta charset>``, else UTF-8."""
    sniffed = _META_CHARSET.search(body[:4096])
    for name in (charset, sniffed.group(1).decode("ascii") if sniffed else None, "utf-8"):
        if name:
            try:
                return body.decode(name, errors="replace")
            except LookupError:  # a charset Python does not know: try the next guess
                continue
    return body.decode("utf-8", errors="replace")


# ---------------------------------------------------------------- robots.txt

_robots: dict[str, tuple[float, RobotFileParser]] = {}
_robots_lock = threading.Lock()


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an http(s) URL, without credentials or a default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}"


def clear_robots_cache() -> None:
    """Forget every robots.txt read by this process."""
    with _robots_lock:
        _robots.clear()


def robots_for(client: httpx.Client, origin: str) -> RobotFileParser:
    """The robots.txt rules of ``origin``, from this process's cache if read < 10 min ago."""
    now = time.monotonic()
    with _robots_lock:
        cached = _robots.get(origin)
    if cached is not None and cached[0] > now:
        return cached[1]
    # Fetched outside the lock: two threads may both fetch once, but no thread waits on
    # another origin's slow server.
    rules = _fetch_robots(client, origin)
    with _robots_lock:
        if len(_robots) >= 1024:
            for stale in [key for key, (expires, _) in _robots.items() if expires <= now]:
                del _robots[stale]
        _robots[origin] = (now + ROBOTS_TTL_S, rules)
    return rules


def _fetch_robots(client: httpx.Client, origin: str) -> RobotFileParser:
    url = f"{origin}/robots.txt"
    rules = RobotFileParser(url)
    try:
        with client.stream("GET", url, follow_redirects=True) as response:
            status = response.status_code
            if 200 <= status < 300:
                body = _read_capped(response, ROBOTS_MAX_BYTES, truncate=True)
                rules.parse(body.decode("utf-8", errors="replace").splitlines())
                return rules
            if status >= 500 or status in RETRYABLE:
                # A site that cannot say what it allows may allow nothing: wait and ask again.
                _raise_retryable(f"GET {url}: HTTP {status} {response.reason_phrase}", response)
    except httpx.TooManyRedirects:
        pass  # RFC 9309: like a robots.txt that is unavailable, which allows everything
    except httpx.TimeoutException:
        raise ScrapeUnavailable(f"GET {url}: {_no_answer(client)}") from None
    except httpx.TransportError as error:
        raise ScrapeUnavailable(f"GET {url}: {type(error).__name__}: {error}") from None
    # No robots.txt (404, or any other 4xx): nothing is off limits.
    rules.allow_all = True  # type: ignore[attr-defined]  # RobotFileParser's; typeshed omits it
    return rules


def check_robots(client: httpx.Client, url: str, agent: str) -> None:
    """Raise ``ScrapeRejected`` if the robots.txt of ``url``'s origin disallows it for ``agent``."""
    origin = origin_of(url)
    if robots_for(client, origin).can_fetch(agent, url):
        return
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    raise ScrapeRejected(f"robots.txt of {origin} disallows {path} for {agent}")


# ---------------------------------------------------------------- fetching


@dataclass(frozen=True)
class Page:
    """A fetched HTML page."""

    final_url: str
    status: int
    body: bytes
    charset: str | None


def checked_url(url: Any, what: str = "scrape URL") -> str:
    """``url`` if it is an http(s) URL with a host; else ``ScrapeRejected``."""
    problem = not isinstance(url, str)
    if not problem:
        try:
            parts = urlsplit(url)
            problem = parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
            httpx.URL(url)
        except (ValueError, httpx.InvalidURL):
            problem = True
    if problem:
        shown = mask_url(url) if isinstance(url, str) else url
        raise ScrapeRejected(f"{what} must be http:// or https:// with a host, got {shown!r}")
    return url


def _no_answer(client: httpx.Client) -> str:
    return f"no answer within {client.timeout.read:g} s"


def _raise_retryable(detail: str, response: httpx.Response) -> NoReturn:
    delay = retry_after_ms(response.headers.get("Retry-After"))
    if delay is not None:
        raise Retry(detail, delay=delay)
    raise ScrapeUnavailable(detail)


def _read_capped(response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
    """The body, streamed; past ``limit`` bytes, cut (``truncate``) or ``ScrapeRejected``."""
    declared = response.headers.get("Content-Length", "")
    if not truncate and declared.isdigit() and int(declared) > limit:
        raise ScrapeRejected(
            f"GET {mask_url(str(response.url))}: {declared} bytes is over {MAX_BYTES_ENV}={limit}"
        )
    chunks: list[bytes] = []
    size = 0
    # Decoded bytes: the cap also holds for a small gzip that inflates to gigabytes.
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if truncate:
                return b"".join(chunks)[:limit]
            raise ScrapeRejected(
                f"GET {mask_url(str(response.url))}: body is over {MAX_BYTES_ENV}={limit} bytes"
            )
    return b"".join(chunks)


def fetch_page(client: httpx.Client, url: str, agent: str, limit: int) -> Page:
    """GET ``url``, following up to 5 redirects, each hop checked against its robots.txt."""
    request = client.build_request("GET", url)
    for hop in range(MAX_REDIRECTS + 1):
        current = checked_url(str(request.url), "redirect target" if hop else "scrape URL")
        check_robots(client, current, agent)
        where = mask_url(current) + (f" (redirected from {mask_url(url)})" if hop else "")
        try:
            response = client.send(request, stream=True)
            try:
                if response.next_request is None:
                    return _page_of(response, where, limit)
                request = response.next_request
            finally:
                response.close()
        except httpx.TimeoutException:
            raise ScrapeUnavailable(f"GET {where}: {_no_answer(client)}") from None
        except httpx.TransportError as error:
            raise ScrapeUnavailable(f"GET {where}: {type(error).__name__}: {error}") from None
    raise ScrapeRejected(f"GET {mask_url(url)}: more than {MAX_REDIRECTS} redirects")


def _page_of(response: httpx.Response, where: str, limit: int) -> Page:
    status = response.status_code
    detail = f"GET {where}: HTTP {status} {response.reason_phrase}"
    if status >= 500 or status in RETRYABLE:
        _raise_retryable(detail, response)
    if not 200 <= status < 300:
        raise ScrapeRejected(detail)
    content_type = response.headers.get("Content-Type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in HTML_TYPES:
        raise ScrapeRejected(f"GET {where}: not HTML (Content-Type {content_type!r})")
    body = _read_capped(response, limit)
    return Page(str(response.url), status, body, response.charset_encoding)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~70 ms, far more than a small page: once per process.
    return httpx.create_ssl_context()


def write_json_atomically(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so a reader sees the old file or the whole new one."""
    # Serialized first: data that is not JSON fails before anything is written.
    write_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@dramatiq.actor(
    queue_name=QUEUE,
    max_retries=5,
    min_backoff=5_000,
    max_backoff=300_000,
    throws=(ScrapeRejected,),
    time_limit=300_000,
    rate_limit=RATE_LIMIT,
    rate_limit_key=host_key,
)
def scrape_page(url: str, output_path: str | None = None, timeout_s: float = 10.0) -> None:
    """Fetch ``url``; write its title and links as JSON to ``output_path`` (or the default)."""
    # The result is in the file: a returned value would be dropped (no results backend),
    # with Dramatiq's warning on every run.
    scrape(url, output_path, timeout_s)


def scrape(url: str, output_path: str | None = None, timeout_s: float = 10.0) -> dict[str, Any]:
    """``scrape_page``'s work: fetches, writes the JSON file, and returns what it wrote."""
    checked_url(url)
    agent, limit = user_agent(), max_bytes()
    with httpx.Client(
        timeout=timeout_s,
        follow_redirects=False,
        headers={"User-Agent": agent},
        verify=_ssl_context(),
    ) as client:
        page = fetch_page(client, url, agent, limit)
    title, links = extract(decode(page.body, page.charset), page.final_url)
    result = {
        "url": url,
        "final_url": page.final_url,
        "status": page.status,
        "title": title,
        "links": links,
        "fetched_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "bytes": len(page.body),
    }
    path = Path(output_path) if output_path else default_output(url)
    write_json_atomically(path, result)
    logger.info(
        "scraped %s: HTTP %d, %d bytes, %d links%s -> %s",
        mask_url(page.final_url),
        page.status,
        len(page.body),
        len(links),
        " (capped)" if len(links) >= MAX_LINKS else "",
        path,
    )
    return result
