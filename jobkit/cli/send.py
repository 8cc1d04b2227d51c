"""``jobkit send ACTOR [ARG ...]``: enqueue one job from the shell, checked before it is sent."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from dramatiq import Message

from brokers import check_broker
from jobkit.app import load_app
from jobkit.arguments import DURATION_ACCEPTED, checked, duration_ms, json_object
from jobkit.errors import JobkitError
from jobkit.output import print_json, print_line
from middleware.priorities import LEVELS, parse_level
from middleware.send_checks import check_arguments
from middleware.unique_jobs import DEDUPLICATED, UNIQUE


class BadJobError(JobkitError, ValueError):
    """The actor or its arguments given on the command line are not valid."""


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "send",
        help="enqueue one job",
        description="Send one job to the configured broker. Each ARG is parsed as JSON "
        "(so 5 is an int, '\"5\"' a string); text that is not JSON is passed as a string. "
        "The actor name and the arguments are checked against the actor's signature first.",
    )
    parser.add_argument("actor", metavar="ACTOR", help="actor name, e.g. sleep_ms")
    parser.add_argument("args", nargs="*", metavar="ARG", help="positional arguments")
    parser.add_argument(
        "--kwargs",
        type=json_object,
        default="{}",
        metavar="JSON",
        help="keyword arguments as a JSON object",
    )
    parser.add_argument(
        "--delay",
        type=duration_ms,
        default=None,
        metavar="DELAY",
        help=f"run no sooner than DELAY from now: {DURATION_ACCEPTED.removeprefix('a ')}",
    )
    parser.add_argument(
        "--priority",
        type=checked(parse_level, "priority"),
        metavar="LEVEL",
        help=f"{', '.join(LEVELS)} (default: the actor's own, normally normal)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the sent message as JSON (queue_name: the actor's queue)",
    )
    parser.set_defaults(handler=run)


def parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run(args: argparse.Namespace) -> int:
    broker = load_app(args.app)
    try:
        actor = broker.get_actor(args.actor)
    except Exception:
        known = ", ".join(sorted(broker.get_declared_actors()))
        raise BadJobError(f"no actor named {args.actor!r}; known actors: {known}") from None
    kwargs = args.kwargs
    positional = [parse_arg(text) for text in args.args]
    check_arguments(actor, positional, kwargs)  # before connecting; send() checks it again
    options = {} if args.priority is None else {"priority": args.priority}
    check_broker(broker)
    message = actor.send_with_options(
        args=tuple(positional), kwargs=kwargs, delay=args.delay or None, **options
    )  # --delay 0: not delayed (Dramatiq would route it through the delay queue)
    # A delayed message waits in Dramatiq's delay queue ("default.DQ"), an internal name:
    # people know the actor's queue, where it runs once due.
    if args.json:
        print_json({**message.asdict(), "queue_name": actor.queue_name})
    elif message.options.get(DEDUPLICATED):
        print_line(
            f"not sent: {actor.actor_name} with unique key {message.options.get(UNIQUE)!r} is "
            f"already pending (message id {message.message_id})"
        )
    else:
        print_line(
            f"sent {actor.actor_name} to queue {actor.queue_name!r}{_due(message)} "
            f"(message id {message.message_id})"
        )
    return 0


def _due(message: Message) -> str:
    """``, due at <local time>`` for a delayed message, else nothing."""
    eta = message.options.get("eta")
    if eta is None:
        return ""
    due = datetime.fromtimestamp(int(eta) / 1000).astimezone()
    return f", due at {due.isoformat(timespec='seconds')}"
