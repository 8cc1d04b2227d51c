"""What :class:`~middleware.job_records.JobRecords` hands a record store, and a job's states.

The store itself (``brokers/job_record_store.py``) keeps records in the state
Redis; ``build_stack`` hands ``JobRecords`` a factory that makes one from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

QUEUED, DELAYED, DEFERRED = "queued", "delayed", "deferred"
RUNNING, RETRYING = "running", "retrying"
SUCCEEDED, FAILED, CANCELLED, SKIPPED = "succeeded", "failed", "cancelled", "skipped"
#: Every state a job's record can be in, in lifecycle order.
STATES = (QUEUED, DELAYED, DEFERRED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED, SKIPPED)
#: States a job does not leave: its record then expires after ``JOBKIT_JOB_TTL``.
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED, SKIPPED})

#: Event kinds: a state change (with fields), a claim (a worker took the job and will
#: run it unless the answer says otherwise), a patch (fields of an existing record:
#: progress, links).
EVENT, CLAIM, PATCH = "e", "c", "p"

# Record fields, short because every record repeats them (lua/job_records.lua has the rest).
ACTOR, QUEUE, PRIORITY, ENQUEUED_AT, ARGS, GROUP = "ac", "qu", "pr", "eq", "ar", "gr"
REPLAYED_FROM, REPLAYED_AS, PROGRESS = "rf", "ra", "pg"
RESULT, RESULT_ERROR, DEAD_LETTER, REASON, UNIQUE_KEY = "rs", "re", "dl", "rn", "uk"
#: A new attempt (numbered by the store) and the latest one.
NEW_ATTEMPT, LAST_ATTEMPT = "at#", "at$"


def once(name: str) -> str:
    """A field set only if the record does not have it yet (whichever event comes first)."""
    return "?" + name


def attempt_field(number: int | None) -> str:
    """The field of attempt ``number`` (None: the latest)."""
    return f"at:{number}" if number is not None else LAST_ATTEMPT


# Phases of one attempt, in the order they happen (see :func:`ordinal`).
CREATED, DUE, DEFERRAL, START, END, RETRY = range(6)


def ordinal(attempt: int, deferrals: int, phase: int) -> int:
    """Where an event falls in a job's life, comparable across processes and hosts.

    Events of one job come from the sender and from workers, through separate
    batches, so they may reach the store out of order; the store keeps the
    state of the event with the highest ordinal, and sorts the history by it.
    ``attempt`` counts runs (1 for the first), ``deferrals`` the rate-limit
    deferrals so far; both only grow.
    """
    return attempt * 1_000_000_000 + deferrals * 10 + phase


@dataclass(slots=True)
class Event:
    """One change to a job's record (``kind``: :data:`EVENT`, :data:`CLAIM`, :data:`PATCH`)."""

    kind: str
    job_id: str
    actor: str
    queue: str
    ordinal: int
    #: The state the job enters ("" for none).
    state: str
    #: When it happened, ms since the epoch.
    ms: int
    #: What the state adds: an eta (ms) for delayed, deferred and retrying; a reason.
    note: str = ""
    #: Record fields to set (the names above; see :func:`once`, :func:`attempt_field`).
    fields: dict[str, str] = field(default_factory=dict)


#: A claim's answer: :data:`KNOWN` or :data:`UNKNOWN` (run it), ``"cancelled"``,
#: ``"done:<state>"`` (do not), or None when the store did not answer (the job runs;
#: its record is best effort).
ClaimReply = int | str | None
#: Run it; the record holds what the job is (its send wrote it) or not (its start says it).
KNOWN, UNKNOWN = 1, 0


class PendingClaim(Protocol):
    """A claim handed to the store: its answer comes with a later batch."""

    def wait(self, timeout: float) -> ClaimReply:
        """The answer, or None if it did not come within ``timeout`` seconds."""
        ...


class RecordSink(Protocol):
    """Where job events go: written off the job's thread, in batches."""

    def put(self, event: Event) -> None:
        """Hand over an event; it is written with the next batch."""
        ...

    def claim(self, event: Event) -> PendingClaim:
        """Mark the job as held by a worker, unless it was cancelled or finished meanwhile
        (from then on a cancel is announced to the workers, as for a running job)."""
        ...

    def flush(self, timeout: float) -> bool:
        """Wait until every event handed over so far is written; False on timeout."""
        ...

    def watch_cancels(
        self, on_cancel: Callable[[str], None], running: Callable[[], list[str]]
    ) -> None:
        """Call ``on_cancel(job_id)`` (from the sink's thread) when a running job is cancelled;
        ``running()`` lists the jobs running here, checked each time the watch (re)starts."""
        ...

    def stop_watching(self) -> None:
        """Stop calling ``on_cancel`` (the worker is shutting down)."""
        ...


SinkFactory = Callable[..., RecordSink]
