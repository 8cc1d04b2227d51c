"""Webhook deliveries against a local HTTP receiver: success, retried failures, rejections."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dramatiq
import pytest
from dramatiq import Broker

from actors.webhooks import deliver_webhook, retry_after_ms
from brokers.dead_letter_store import dead_letter_store
from tests.support.processes import wait_until, worker
from tests.support.shipped import redeclare

QUEUE = "jobkit-test"


class Receiver:
    """Answers each POST with the next scripted (status, delay_s, headers); records requests."""

    def __init__(self) -> None:
        self.script: list[tuple[int, float, dict[str, str]]] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    status, delay, headers = (
                        receiver.script.pop(0) if receiver.script else (200, 0.0, {})
                    )
                time.sleep(delay)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    try:
        yield running
    finally:
        running.close()


def declare(broker: Broker) -> dramatiq.Actor:
    return redeclare(deliver_webhook, broker)


def send(actor: dramatiq.Actor, url: str, **kwargs: Any) -> dramatiq.Message:
    return actor.send(url, {"order": 42}, "key-123", **kwargs)


def test_a_webhook_is_posted_once_with_its_idempotency_key(
    system_broker: Broker, receiver: Receiver
) -> None:
    actor = declare(system_broker)
    send(actor, receiver.url, headers={"Authorization": "Bearer s3cret"})
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: len(receiver.requests) == 1, 20)
        time.sleep(0.3)
    (request,) = receiver.requests
    assert json.loads(request["body"]) == {"order": 42}
    assert request["headers"]["Idempotency-Key"] == "key-123"
    assert request["headers"]["Authorization"] == "Bearer s3cret"
    assert request["headers"]["Content-Type"] == "application/json"
    assert dead_letter_store(system_broker).count() == 0


def test_server_errors_and_timeouts_are_retried_with_the_same_key(
    system_broker: Broker, receiver: Receiver
) -> None:
    actor = declare(system_broker)
    receiver.script = [(503, 0, {}), (200, 1.0, {}), (500, 0, {})]  # 2nd attempt times out
    send(actor, receiver.url, timeout_s=0.3)
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: len(receiver.requests) == 4, 30)
        time.sleep(0.5)
    assert len(receiver.requests) == 4  # 503, timeout, 500, then 200
    assert {r["headers"]["Idempotency-Key"] for r in receiver.requests} == {"key-123"}
    assert dead_letter_store(system_broker).count() == 0


def test_a_client_error_is_dead_lettered_without_retries(
    system_broker: Broker, receiver: Receiver
) -> None:
    actor = declare(system_broker)
    receiver.script = [(422, 0, {})]
    message = send(actor, receiver.url)
    store = dead_letter_store(system_broker)
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: store.count() == 1, 20)
        time.sleep(0.3)
    assert len(receiver.requests) == 1
    record = store.get(message.message_id)
    assert record["reason"] == "non_retryable" and record["exc_type"] == "WebhookRejected"
    assert "HTTP 422" in record["exc_message"] and record["attempts"] == 1


def test_retry_after_sets_the_next_delay(system_broker: Broker, receiver: Receiver) -> None:
    actor = declare(system_broker)
    receiver.script = [(429, 0, {"Retry-After": "1"})]
    send(actor, receiver.url)
    with worker(system_broker, threads=2, queues={QUEUE}):
        assert wait_until(lambda: len(receiver.requests) == 2, 20)
    first, second = (r["headers"] for r in receiver.requests)
    assert first["Idempotency-Key"] == second["Idempotency-Key"]


def test_retry_after_parses_seconds_and_dates() -> None:
    assert retry_after_ms("2") == 2000
    assert retry_after_ms(None) is None and retry_after_ms("soon") is None
    assert 0 < retry_after_ms(formatdate(time.time() + 30, usegmt=True)) <= 30_000
    assert retry_after_ms("999999") == 3_600_000  # capped at an hour


def test_a_bad_url_is_rejected_at_once(system_broker: Broker) -> None:
    actor = declare(system_broker)
    message = actor.send("ftp://example.com/x", {}, "k")
    store = dead_letter_store(system_broker)
    with worker(system_broker, threads=1, queues={QUEUE}):
        assert wait_until(lambda: store.count() == 1, 20)
    assert store.get(message.message_id)["reason"] == "non_retryable"
