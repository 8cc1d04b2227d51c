"""``jobkit dead-letters``: list, show, replay and purge jobs that failed for good."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.markup import escape

from brokers import check_broker
from brokers.dead_letter_store import (
    DeadLetterError,
    DeadLetterStore,
    Filters,
    dead_letter_store,
)
from jobkit.app import load_app
from jobkit.arguments import duration_ms, id_prefix, moment_ms, name, whole
from jobkit.errors import UsageError
from jobkit.output import print_json, print_line, print_listing, stderr, stdout
from jobkit.settings import current
from middleware.dead_letters import REASONS
from middleware.redaction import Redactor

#: What ``list`` prints when nothing matches its filters, or there is none (``--json``: ``[]``).
NONE_MATCH, NONE = "no dead letters match", "no dead letters"


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "dead-letters",
        help="list, show, replay and purge jobs that failed for good",
        description="Jobs that failed for good (retries exhausted, a non-retryable error, an age "
        "or time limit, a rate limit waited too long, an unknown actor) and bytes found in a "
        "queue that are not a message, each kept with its reason, exception and traceback. "
        f"Reasons: {', '.join(REASONS)}. An ID may be any unique prefix of a dead letter's "
        "id (at least 4 characters), as git takes a commit's.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="dead letters, newest first")
    _add_filters(listing)
    listing.add_argument(
        "--limit", type=whole(1), default=50, metavar="N", help="at most N (default: 50)"
    )
    listing.add_argument(
        "--json", action="store_true", help="print full records as JSON ([] if none match)"
    )
    listing.set_defaults(handler=run_list)

    show = actions.add_parser(
        "show",
        help="one dead letter, with traceback and message",
        description="Print one dead letter. Keyword arguments whose names match "
        "JOBKIT_LOG_REDACT are masked; --json prints the record exactly as kept.",
    )
    show.add_argument("id", type=id_prefix, metavar="ID", help="an id, or a unique prefix of one")
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    show.set_defaults(handler=run_show)

    replay = actions.add_parser(
        "replay",
        help="send dead letters to their queue again",
        description="Re-enqueue each dead letter's original message (new message id, retry "
        "count reset, options['replayed_from'] = the dead letter's id). A dead letter is "
        "deleted only after its enqueue is confirmed by the broker. Undecodable ones have no "
        "message and are skipped.",
    )
    _add_selection(replay)
    replay.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    replay.add_argument("--json", action="store_true", help="print the outcome as JSON")
    replay.set_defaults(handler=run_replay)

    purge = actions.add_parser("purge", help="delete dead letters")
    _add_selection(purge)
    purge.add_argument(
        "--older-than",
        type=duration_ms,
        metavar="AGE",
        help="with --all: only those that failed more than AGE ago (e.g. 7d, 12h)",
    )
    purge.add_argument("--yes", action="store_true", help="do not ask before deleting a selection")
    purge.add_argument("--json", action="store_true", help="print the count as JSON")
    purge.set_defaults(handler=run_purge)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", type=name, metavar="Q", help="only this queue")
    parser.add_argument("--actor", type=name, metavar="A", help="only this actor")
    parser.add_argument(
        "--reason",
        choices=REASONS,
        metavar="R",
        help=f"only this reason: {', '.join(REASONS)}",
    )
    parser.add_argument(
        "--since",
        type=moment_ms,
        metavar="T",
        help="only those that failed since T: an age (30m, 2h, 7d) or an ISO-8601 time",
    )


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "ids", nargs="*", type=id_prefix, metavar="ID", help="dead letter ids, or unique prefixes"
    )
    parser.add_argument(
        "--all", action="store_true", help="every dead letter matching the filters (or all)"
    )
    _add_filters(parser)


def filters_from(args: argparse.Namespace) -> Filters:
    older_than = getattr(args, "older_than", None)
    return Filters(
        queue=args.queue,
        actor=args.actor,
        reason=args.reason,
        since_ms=args.since,
        before_ms=int(time.time() * 1000) - older_than if older_than is not None else None,
    )


def _store(app: str | None, *, attach_only: bool = False) -> DeadLetterStore:
    broker = load_app(app, attach_only=attach_only)
    check_broker(broker)
    return dead_letter_store(broker)


def _selection(args: argparse.Namespace) -> tuple[list[str], Filters | None]:
    filters = filters_from(args)
    filtered = filters != Filters()
    if args.ids and (args.all or filtered):
        raise UsageError("give dead letter ids, or --all with filters, not both")
    if not args.ids and not args.all:
        raise UsageError("give dead letter ids, or --all (optionally with filters)")
    return list(args.ids), filters if args.all else None


def _error_text(record: dict[str, Any], width: int = 70) -> str:
    text = ": ".join(filter(None, (record.get("exc_type"), record.get("exc_message")))) or "-"
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def run_list(args: argparse.Namespace) -> int:
    filters = filters_from(args)
    records = _store(args.app, attach_only=True).list(filters, limit=args.limit)
    print_listing(
        records,
        as_json=args.json,
        title=f"dead letters (newest first, at most {args.limit})",
        columns=("id", "failed at", "queue", "actor", "reason", "attempts", "error"),
        row=lambda r: (
            r["id"],
            r.get("failed_at"),
            r.get("queue"),
            r.get("actor"),
            r.get("reason"),
            r.get("attempts"),
            _error_text(r),
        ),
        empty=NONE if filters == Filters() else NONE_MATCH,
        ids=("id",),
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    store = _store(args.app, attach_only=True)
    dead_letter_id = store.resolve(args.id)
    record = store.get(dead_letter_id)
    if record is None:  # purged since it was resolved
        raise DeadLetterError(f"dead letter {dead_letter_id} was just deleted")
    if args.json:
        print_json(record)
        return 0

    def field(label: str, value: Any) -> None:
        stdout.print(f"[bold]{label}[/]: {escape(str(value))}", highlight=False)

    for key in ("id", "queue", "actor", "reason", "attempts", "enqueued_at", "failed_at"):
        field(key, record.get(key))
    field("worker", f"{record.get('host')} pid {record.get('pid')}")
    if record.get("replayed_from"):
        field("replayed_from", record["replayed_from"])
    field("error", _error_text(record, width=2000))
    if record.get("message"):
        message = record["message"]
        # Secret-named arguments (also inside dicts) are masked as in logs, long values cut;
        # --json prints the record as kept.
        redactor = Redactor.from_settings(current())
        field(
            "message",
            f"{message['actor_name']} args={redactor.value(message['args'])!r} "
            f"kwargs={redactor.value(message['kwargs'])!r} options={message['options']!r}",
        )
    if record.get("raw") is not None:
        field(f"raw ({record.get('raw_encoding')})", record["raw"])
    if record.get("traceback"):
        stdout.print("[bold]traceback[/]:", highlight=False)
        stdout.print(record["traceback"].rstrip(), markup=False, highlight=False)
    return 0


def run_replay(args: argparse.Namespace) -> int:
    ids, filters = _selection(args)
    store = _store(args.app)
    ids = store.resolve_all(ids)  # every id known and unambiguous, or nothing is replayed
    with _progress("replaying") as advance:
        report = store.replay(ids, filters, dry_run=args.dry_run, progress=advance)
    if args.json:
        print_json({"dry_run": args.dry_run, **report.as_dict()})
    else:
        verb = "would replay" if args.dry_run else "replayed"
        print_line(f"{verb} {len(report.replayed)} dead letter(s)")
        for dead_letter_id, why in {**report.skipped, **report.failed}.items():
            stderr.print(f"  {dead_letter_id}: {why}", markup=False, highlight=False)
    return 1 if report.failed else 0


def run_purge(args: argparse.Namespace) -> int:
    ids, filters = _selection(args)
    store = _store(args.app)
    ids = store.resolve_all(ids)  # every id known and unambiguous, or nothing is deleted
    if filters is not None:
        ids = ids + [record["id"] for record in store.iter(filters)]
        if ids and not args.yes and not _confirm(f"delete {len(ids)} dead letter(s)?"):
            raise DeadLetterError(f"not deleting {len(ids)} dead letter(s) without --yes")
    removed = store.remove(ids)
    if args.json:
        print_json({"purged": removed})
    else:
        print_line(f"purged {removed} dead letter(s)")
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


class _progress:  # noqa: N801 - used as a context manager, like rich's
    """A rich progress bar on a terminal (nothing otherwise); yields ``advance(done, total)``."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not stderr.is_terminal:
            return None
        from rich.progress import Progress

        self._bar = Progress(console=stderr, transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=None)

        def advance(done: int, total: int) -> None:
            self._bar.update(task, completed=done, total=total)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
