"""A test middleware that writes one JSON line per job start and end, outside the broker."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from dramatiq import Broker, Message, Middleware


class JobLog(Middleware):
    """Appends ``{"event": "start"|"end", "id", "actor", "args", "retries", "deferrals", "t"}``.

    Added after jobkit's stack, so a job deferred by RateLimits never logs a start.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def _write(self, event: str, message: Message, **extra: Any) -> None:
        line = json.dumps(
            {
                "event": event,
                "id": message.message_id,
                "actor": message.actor_name,
                "args": list(message.args),
                "retries": message.options.get("retries", 0),
                "deferrals": message.options.get("rate_limit_deferrals", 0),
                "t": time.time(),
                **extra,
            }
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def before_process_message(self, broker: Broker, message: Message) -> None:
        self._write("start", message)

    def after_process_message(
        self, broker: Broker, message: Message, *, result: Any = None, exception: Any = None
    ) -> None:
        self._write("end", message, failed=exception is not None)


def read(path: str | Path) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    # A line still being written (read before its newline) is not an event yet.
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]
