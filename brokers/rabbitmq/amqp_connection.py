"""Connections to RabbitMQ: the defaults a URL gets, and the short reason a failed one gives."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Applied unless the URL sets them. A publish with confirms waits for the
# broker's ack; while RabbitMQ blocks publishers (memory or disk alarm) that
# wait would be endless without blocked_connection_timeout.
CONNECTION_DEFAULTS = {
    "heartbeat": "30",
    "blocked_connection_timeout": "30",
    "socket_timeout": "10",
    "stack_timeout": "15",
    "connection_attempts": "3",
    "retry_delay": "1",
}


def with_connection_defaults(url: str) -> str:
    """``url`` with :data:`CONNECTION_DEFAULTS` added to its query string where absent."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, value in CONNECTION_DEFAULTS.items():
        query.setdefault(name, value)
    return urlunsplit(parts._replace(query=urlencode(query)))


def error_reason(error: BaseException) -> str:
    """The root cause pika wraps (often several levels deep), as short text."""
    for _ in range(5):
        inner = getattr(error, "exception", None) or (error.args[0] if error.args else None)
        if not isinstance(inner, BaseException):
            break
        error = inner
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    return text.rstrip(".")
