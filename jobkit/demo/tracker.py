"""What happened to each job the demo sent, read from the workers' JSON job events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

#: Job event -> the counter it moves.
COUNTED = {
    "job.succeeded": "processed",
    "job.dead_lettered": "dead_lettered",
    "job.retry_scheduled": "retried",
    "job.rate_limited": "deferred",
}


@dataclass
class ActorCounts:
    sent: int = 0
    processed: int = 0
    retried: int = 0
    deferred: int = 0
    dead_lettered: int = 0
    #: Jobs sent to fail on purpose (a broken image, a forbidden page, a gone endpoint).
    meant_to_fail: int = 0

    @property
    def finished(self) -> int:
        return self.processed + self.dead_lettered


@dataclass
class Tracker:
    """Follows the worker log (``JOBKIT_LOG_FORMAT=json``) for the message ids it was given."""

    log: Path
    actors: dict[str, ActorCounts] = field(default_factory=dict)
    _jobs: dict[str, tuple[str, bool]] = field(default_factory=dict)
    _ended: dict[str, str] = field(default_factory=dict)
    _offset: int = 0
    _partial: bytes = b""

    def expect(self, message_id: str, actor: str, *, meant_to_fail: bool = False) -> None:
        counts = self.actors.setdefault(actor, ActorCounts())
        counts.sent += 1
        counts.meant_to_fail += meant_to_fail
        self._jobs[message_id] = (actor, meant_to_fail)

    def poll(self) -> None:
        """Read what the workers wrote since the last call."""
        try:
            with self.log.open("rb") as source:
                source.seek(self._offset)
                chunk = source.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._read(line)

    def _read(self, line: bytes) -> None:
        if not line.startswith(b"{"):
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        counter = COUNTED.get(event.get("event"))
        job = self._jobs.get(event.get("message_id"))
        if counter is None or job is None:
            return
        if counter in ("processed", "dead_lettered"):
            if event["message_id"] in self._ended:
                return  # a redelivered duplicate: count each job once
            self._ended[event["message_id"]] = counter
        counts = self.actors[job[0]]
        setattr(counts, counter, getattr(counts, counter) + 1)

    @property
    def sent(self) -> int:
        return len(self._jobs)

    @property
    def finished(self) -> int:
        return len(self._ended)

    def surprises(self) -> list[str]:
        """Jobs that ended otherwise than planned, one line each."""
        lines = []
        for message_id, ended in self._ended.items():
            actor, meant_to_fail = self._jobs[message_id]
            if meant_to_fail != (ended == "dead_lettered"):
                planned = "dead-lettered" if meant_to_fail else "processed"
                lines.append(f"{actor} job {message_id} was to be {planned}, but it was {ended}")
        return lines
