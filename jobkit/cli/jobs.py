"""``jobkit jobs``: list, show, wait for and cancel jobs by their records.

Each job's record (``brokers/job_record_store.py``) says what happened to it. An
id that no record has is "not found" (exit code ``NOT_FOUND``), never a guessed
state; ``wait`` has exit codes of its own for a job that did not succeed and for
a timeout (``jobkit.exit_codes``).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from datetime import datetime
from typing import Any

from dramatiq import Broker
from rich.markup import escape

from brokers import check_broker
from brokers.job_record_store import (
    LISTING,
    Attempt,
    JobFailed,
    JobRecord,
    JobRecordStore,
    ResultTooLarge,
    UnknownJob,
    WaitTimeout,
    job_records,
)
from jobkit import exit_codes
from jobkit.app import load_app
from jobkit.arguments import id_prefix, moment_ms, name, one_or_more_of, seconds, whole
from jobkit.output import print_json, print_line, print_listing, stdout
from middleware.clipping import clip
from middleware.dead_letters import iso_ms
from middleware.job_records import COOPERATIVE
from middleware.record_sink import DEFERRED, DELAYED, RETRYING, RUNNING, STATES

#: What ``list`` prints when nothing matches its filters, or there is none (``--json``: ``[]``).
NONE_MATCH, NONE = "no jobs match", "no jobs"
#: Characters of arguments, a result or an error ``show`` prints (``--json`` has them whole).
SHOWN_CHARS = 1000
_WAITING = (DELAYED, DEFERRED, RETRYING)


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "jobs",
        help="list, show, wait for and cancel jobs by id",
        description="Every job's record: its states in order, its attempts, its result (for "
        "actors with store_results=True) and progress, kept in the state Redis for "
        "JOBKIT_JOB_TTL once finished. An ID is the message id send() returned (jobkit send "
        "prints it), or any unique prefix of it of at least 4 characters. An id no record "
        f"has is not found: exit code {exit_codes.NOT_FOUND}.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="jobs, most recently changed first")
    listing.add_argument(
        "--state",
        type=one_or_more_of(STATES, "state"),
        action="extend",
        metavar="S",
        help=f"only jobs in state S (repeatable, or comma-separated): {', '.join(STATES)}",
    )
    listing.add_argument("--actor", type=name, metavar="A", help="only this actor's jobs")
    listing.add_argument("--queue", type=name, metavar="Q", help="only this queue's jobs")
    listing.add_argument(
        "--since",
        type=moment_ms,
        metavar="T",
        help="only jobs whose state changed since T: an age (30m, 2h, 7d) or an ISO-8601 time",
    )
    listing.add_argument(
        "--limit", type=whole(1), default=20, metavar="N", help="at most N (default: 20)"
    )
    listing.add_argument(
        "--json", action="store_true", help="print full records as JSON ([] if none match)"
    )
    listing.set_defaults(handler=run_list)

    show = actions.add_parser(
        "show",
        help="one job: states, attempts, result",
        description="Print a job's record: its states in order (with due times), every "
        "attempt (start, duration, host:pid, outcome, error), progress, result, dead letter, "
        "replay links and group.",
    )
    show.add_argument("id", type=id_prefix, metavar="ID", help="a job id, or a unique prefix")
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    show.set_defaults(handler=run_show)

    wait = actions.add_parser(
        "wait",
        help="wait for a job to finish; print its result",
        description="Wait until the job finishes. If it succeeded, print its result as JSON "
        "(null unless its actor keeps results) and exit 0; if it failed, was cancelled or "
        f"skipped, say so in one line and exit {exit_codes.JOB_FAILED}; if --timeout runs "
        f"out first, exit {exit_codes.TIMED_OUT}.",
    )
    wait.add_argument("id", type=id_prefix, metavar="ID", help="a job id, or a unique prefix")
    wait.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="give up after SECONDS (default: wait as long as it takes)",
    )
    wait.add_argument(
        "--json", action="store_true", help="print the job's whole record as JSON, however it ended"
    )
    wait.set_defaults(handler=run_wait)

    cancel = actions.add_parser(
        "cancel",
        help="cancel jobs",
        description="Cancel each job: a queued, delayed, deferred or retrying one never runs; "
        "a running one is interrupted (or, if its actor is cooperative, told); a finished "
        f"one is left as it is. Exits {exit_codes.NOT_FOUND} if any id was not found.",
    )
    cancel.add_argument(
        "ids", nargs="+", type=id_prefix, metavar="ID", help="job ids, or unique prefixes"
    )
    cancel.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    cancel.set_defaults(handler=run_cancel)


def _open(app: str | None) -> tuple[Broker, JobRecordStore]:
    # Every action only reads or marks records: an embedded server is never started.
    broker = load_app(app, attach_only=True)
    check_broker(broker)
    return broker, job_records(broker)


def _store(app: str | None) -> JobRecordStore:
    return _open(app)[1]


def _fail(line: str, code: int) -> int:
    print(f"jobkit: error: {line}", file=sys.stderr)
    return code


# ---------------------------------------------------------------- list


def run_list(args: argparse.Namespace) -> int:
    states = list(dict.fromkeys(args.state or ()))
    records = _store(args.app).find(
        states=states, actor=args.actor, queue=args.queue, since_ms=args.since, limit=args.limit
    )
    now = _now_ms()
    details = [_details(record, now) for record in records]
    columns = ["id", "state", "actor", "queue", "attempts", "changed"]
    if any(details):
        columns.append("details")
    filtered = bool(states or args.actor or args.queue or args.since is not None)
    print_listing(
        [record.as_dict() for record in records] if args.json else records,
        as_json=args.json,
        title=f"jobs (most recently changed first, at most {args.limit})",
        columns=columns,
        row=lambda r: (
            r.id,
            r.state,
            r.actor,
            r.queue,
            len(r.attempts),
            _ago(r.state_at, now),
            _details(r, now),
        )[: len(columns)],
        empty=NONE_MATCH if filtered else NONE,
        whole=("state",),
        ids=("id",),
    )
    return 0


def _details(record: JobRecord, now: int) -> str | None:
    """When a waiting job is due, how far a running one is, why a failed one failed."""
    if record.state in _WAITING and record.due_at:
        due = _ms(record.due_at) - now
        return f"due in {_span(due)}" if due > 0 else "due now"
    if record.state == RUNNING and record.progress:
        return _progress(record.progress)
    return record.reason


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def _span(ms: int) -> str:
    """``ms`` in its largest whole unit: 42s, 5m, 3h, 2d."""
    total = max(ms, 0) // 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if total >= size:
            return f"{total // size}{unit}"
    return f"{total}s"


def _ago(iso: str | None, now: int) -> str | None:
    return f"{_span(now - _ms(iso))} ago" if iso else None


def _progress(progress: dict[str, Any]) -> str:
    percent = f"{float(progress.get('fraction', 0.0)) * 100:.0f}%"
    return " ".join(filter(None, (percent, str(progress.get("message") or ""))))


# ---------------------------------------------------------------- show


def run_show(args: argparse.Namespace) -> int:
    try:
        record = _store(args.app).show(args.id)
    except UnknownJob as error:
        return _fail(str(error), exit_codes.NOT_FOUND)
    if args.json:
        print_json(record.as_dict())
    else:
        print_record(record)
    return 0


def print_record(record: JobRecord) -> None:
    """Every field of the record that says something, then its states and attempts."""

    def field(label: str, value: Any) -> None:
        stdout.print(f"[bold]{label}[/]: {escape(str(value))}", highlight=False)

    def line(text: str) -> None:
        stdout.print(text, markup=False, highlight=False)

    field("id", record.id)
    state = f"{record.state} since {record.state_at}"
    field("state", state + (f", due {record.due_at}" if record.due_at else ""))
    field("actor", record.actor)
    field("queue", record.queue)
    field("priority", record.priority)
    field("args", clip(_arguments(record.args), SHOWN_CHARS))
    field("enqueued", record.enqueued_at)
    if record.group:
        field("group", record.group)
    if record.unique_key:
        field("unique key", record.unique_key)
    if record.cancel_requested_at:
        field("cancel requested", record.cancel_requested_at)
    if record.replayed_from:
        field("replayed from", f"{record.replayed_from} (a dead letter's id)")
    if record.replayed_as:
        field("replayed as", record.replayed_as)
    if record.dead_letter:
        field("dead letter", f"{record.dead_letter} ({record.reason or 'failed'})")
    elif record.reason:
        field("reason", record.reason)
    if record.progress:
        at = iso_ms(record.progress.get("at"))
        field("progress", _progress(record.progress) + (f" (at {at})" if at else ""))
    if record.result_error:
        field("result", f"not kept: {record.result_error}")
    elif record.has_result:
        field("result", clip(record.result_json or "null", SHOWN_CHARS))
    stdout.print("[bold]states[/]:", highlight=False)
    for change in record.history:
        said = f"due {change.due_at}" if change.due_at else change.note and f"({change.note})"
        line("  ".join(filter(None, (f"  {change.state:<9}", change.at, said))))
    stdout.print("[bold]attempts[/]:" + ("" if record.attempts else " none"), highlight=False)
    for attempt in record.attempts:
        line(_attempt_line(attempt))
        if attempt.error_type or attempt.error:
            error = ": ".join(filter(None, (attempt.error_type, attempt.error)))
            # Wrapped under the attempt, not from the left edge.
            for part in textwrap.wrap(clip(error, SHOWN_CHARS), max(stdout.width - 6, 20)):
                line(f"      {part}")


def _attempt_line(attempt: Attempt) -> str:
    parts = [f"  #{attempt.number}  {attempt.outcome:<11}", f"started {attempt.started_at}"]
    if attempt.duration_ms is not None:
        parts.append(_duration(attempt.duration_ms))
    if attempt.host or attempt.pid:
        parts.append(f"on {attempt.host}:{attempt.pid}")
    return "  ".join(parts)


def _duration(ms: float) -> str:
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _arguments(arguments: Any) -> str:
    """``name=value`` pairs (values as JSON), as the record keeps them: secrets masked."""
    if not arguments:
        return "none"
    if isinstance(arguments, dict):
        return ", ".join(f"{key}={json.dumps(value)}" for key, value in arguments.items())
    return json.dumps(arguments)


# ---------------------------------------------------------------- wait


def run_wait(args: argparse.Namespace) -> int:
    store = _store(args.app)
    try:
        result = store.wait(args.id, timeout=args.timeout)
    except UnknownJob as error:
        return _fail(str(error), exit_codes.NOT_FOUND)
    except JobFailed as failure:
        if args.json:
            print_json(failure.record.as_dict())
        return _fail(str(failure), exit_codes.JOB_FAILED)
    except WaitTimeout as error:
        if args.json:
            _print_current(store, args.id)
        return _fail(str(error), exit_codes.TIMED_OUT)
    except ResultTooLarge as error:
        if args.json:
            _print_current(store, args.id)
        # It succeeded, but what a script waits for is not there: not a success.
        return _fail(f"it succeeded, but its result was not kept ({error})", exit_codes.ERROR)
    if args.json:
        _print_current(store, args.id)
    else:
        print_json(result)
    return 0


def _print_current(store: JobRecordStore, job_id: str) -> None:
    print_json(store.show(job_id).as_dict())


# ---------------------------------------------------------------- cancel

_SAID = {
    "cancelled": "cancelled (it was {state}); it will never run",
    "cancelling": "cancelling: it is running, and is being interrupted",
    "told": "cancelling: it is running, and is told to stop (its actor is cooperative)",
    "finished": "already finished ({state}); nothing changed",
    "not_found": "not found: no job has this id (`" + LISTING + "` shows them)",
}


def run_cancel(args: argparse.Namespace) -> int:
    broker, store = _open(args.app)
    # Every id is looked up first: one that several jobs share stops everything (ERROR).
    resolved: dict[str, str | None] = {}
    for given in args.ids:
        try:
            resolved[given] = store.resolve(given)
        except UnknownJob:
            resolved[given] = None
    known = list(dict.fromkeys(job_id for job_id in resolved.values() if job_id))
    outcomes = {outcome.id: outcome for outcome in store.cancel(known)}
    report: list[dict[str, Any]] = []
    for given, job_id in resolved.items():
        if job_id is None:
            report.append({"id": given, "outcome": "not_found", "state": None})
        else:
            done = outcomes[job_id]
            report.append({"id": job_id, "outcome": done.outcome, "state": done.state})
    if args.json:
        print_json(report)
    else:
        for item in report:
            said = item["outcome"]
            if said == "cancelling" and _cooperative(broker, store, item["id"]):
                said = "told"
            said = _SAID.get(said, said).format(state=item["state"])
            print_line(f"{item['id']}: {said}")
    missing = any(item["outcome"] == "not_found" for item in report)
    return exit_codes.NOT_FOUND if missing else exit_codes.OK


def _cooperative(broker: Broker, store: JobRecordStore, job_id: str) -> bool:
    """Whether the job's actor, as the app declares it, stops itself when told."""
    record = store.get(job_id)
    actor = broker.actors.get(record.actor) if record is not None and record.actor else None
    return bool(actor and actor.options.get("cancel_mode") == COOPERATIVE)
