"""A local HTTP server standing in for Sentry's ingest endpoint; records every envelope."""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SentrySink:
    """``with SentrySink() as sink:`` then point ``SENTRY_DSN`` at ``sink.dsn``."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                with sink.lock:
                    sink.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.server_port}/1"

    def __enter__(self) -> SentrySink:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def raw(self) -> bytes:
        with self.lock:
            return b"\n".join(self.bodies)

    def events(self) -> list[dict[str, Any]]:
        """Error events (envelope items of type "event"), decoded."""
        found = []
        with self.lock:
            bodies = list(self.bodies)
        for body in bodies:
            lines = body.split(b"\n")
            # envelope header, then (item header, payload) pairs
            index = 1
            while index + 1 < len(lines):
                try:
                    header = json.loads(lines[index])
                except json.JSONDecodeError:
                    index += 1
                    continue
                payload = lines[index + 1]
                if header.get("type") == "event":
                    found.append(json.loads(payload))
                index += 2
        return found
