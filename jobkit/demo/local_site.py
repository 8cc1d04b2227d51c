"""A local HTTP server that stands in for a website to scrape and a webhook receiver."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROBOTS = b"User-agent: *\nDisallow: /private/\n"
SHOP_PAGES = 6


def _page(title: str, links: list[str]) -> bytes:
    items = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    return (
        f"<!doctype html><html><head><title>{title}</title></head>"
        f"<body><h1>{title}</h1><ul>{items}</ul></body></html>"
    ).encode()


class LocalSite:
    """Serves ``/shop/``, ``/blog/``, ``/private/`` (robots.txt forbids it) and ``/hooks/``.

    ``POST /hooks/<name>`` answers 503 to the first attempt of each
    ``Idempotency-Key`` (so the job retries) and 200 after; ``/hooks/gone``
    always answers 410. Accepted deliveries are appended to ``received``.
    """

    def __init__(self, received: Path) -> None:
        self.received = received
        self.seen_keys: set[str] = set()
        self.lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, body, kind = site.page(self.path)
                self._answer(status, body, kind)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                status = site.delivery(self.path, self.headers, self.rfile.read(length))
                self._answer(status, b"{}", "application/json")

            def _answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass  # the demo's output is its progress and summary

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="demo-site", daemon=True
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> LocalSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def page(self, path: str) -> tuple[int, bytes, str]:
        html = "text/html; charset=utf-8"
        if path == "/robots.txt":
            return 200, ROBOTS, "text/plain"
        if path in ("/shop/", "/shop/index.html"):
            links = [f"page-{n}.html" for n in range(1, SHOP_PAGES + 1)]
            return 200, _page("Shop", [*links, "/blog/", "/private/admin.html"]), html
        if path.startswith("/shop/page-"):
            name = path.rsplit("/", 1)[-1].removesuffix(".html")
            return 200, _page(f"Shop {name}", ["/shop/", f"{name}/reviews.html"]), html
        if path == "/blog/":
            return 200, _page("Blog", ["/blog/hello.html", "https://example.com/"]), html
        if path.startswith("/private/"):
            return 200, _page("Admin", []), html
        return 404, b"not found", "text/plain"

    def delivery(self, path: str, headers: Any, body: bytes) -> int:
        if path == "/hooks/gone":
            return 410
        key = headers.get("Idempotency-Key", "")
        with self.lock:
            first = key not in self.seen_keys
            self.seen_keys.add(key)
            if first:
                return 503
            record = {
                "at": time.time(),
                "path": path,
                "key": key,
                "body": json.loads(body or b"null"),
            }
            with self.received.open("a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
        return 200
