"""Webhooks: POST a JSON payload to another service, retrying only what can succeed later.

    from actors.webhooks import send_webhook
    send_webhook("https://example.com/hooks/orders", {"order": 42, "status": "paid"})

Each delivery carries an ``Idempotency-Key`` header, the same on every attempt,
so a receiver can drop a repeat (an attempt whose response was lost is sent
again). A 5xx, 408, 429, timeout or connection error is retried with
exponential backoff (a ``Retry-After`` header sets the next delay); any other
4xx, or a redirect, means the request itself is wrong: the job is
dead-lettered at once (``non_retryable``), without burning retries.
"""

from __future__ import annotations

import time
import uuid
from email.utils import parsedate_to_datetime
from typing import Any

import dramatiq
import httpx
from dramatiq.errors import Retry

from jobkit.settings import mask_url

QUEUE = "webhooks"
USER_AGENT = "jobkit-webhooks/1"
#: Statuses worth another attempt: the receiver is down, slow, or asks to wait.
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_MS = 3_600_000


class WebhookRejected(Exception):
    """The receiver refused the request (4xx or a redirect): another attempt would fail too."""


class WebhookUnavailable(Exception):
    """The receiver failed or could not be reached (5xx, 408, 429, timeout): retried."""


def send_webhook(
    url: str,
    payload: Any,
    *,
    headers: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    timeout_s: float = 10.0,
    priority: str | None = None,
) -> dramatiq.Message:
    """Enqueue a webhook delivery; the key (a new UUID unless given) is fixed at send time."""
    options: dict[str, Any] = {"priority": priority} if priority else {}
    return deliver_webhook.send_with_options(
        args=(url, payload),
        kwargs={
            "idempotency_key": idempotency_key or str(uuid.uuid4()),
            "headers": headers or {},
            "timeout_s": timeout_s,
        },
        **options,
    )


@dramatiq.actor(
    queue_name=QUEUE,
    max_retries=8,
    min_backoff=1_000,
    max_backoff=600_000,
    throws=(WebhookRejected,),
    time_limit=120_000,
)
def deliver_webhook(
    url: str,
    payload: Any,
    idempotency_key: str,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> None:
    """POST ``payload`` as JSON to ``url`` with ``Idempotency-Key: idempotency_key``."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise WebhookRejected(f"webhook URL must be http:// or https://, got {url!r}")
    where = mask_url(url)
    request_headers = {
        "User-Agent": USER_AGENT,
        **(headers or {}),
        "Idempotency-Key": idempotency_key,
    }
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
            response = client.post(url, json=payload, headers=request_headers)
    except httpx.TimeoutException:
        raise WebhookUnavailable(f"POST {where}: no answer within {timeout_s:g} s") from None
    except httpx.TransportError as error:
        raise WebhookUnavailable(f"POST {where}: {type(error).__name__}: {error}") from None
    status = response.status_code
    if status < 300:
        return
    detail = f"POST {where}: HTTP {status} {response.reason_phrase}: {response.text[:200]!r}"
    if status in RETRYABLE:
        delay = retry_after_ms(response.headers.get("Retry-After"))
        if delay is not None:
            raise Retry(detail, delay=delay)
        raise WebhookUnavailable(detail)
    raise WebhookRejected(detail)


def retry_after_ms(value: str | None) -> int | None:
    """A ``Retry-After`` header (seconds or an HTTP date) in ms, capped at an hour."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return int(min(max(seconds, 0) * 1000, MAX_RETRY_AFTER_MS))
