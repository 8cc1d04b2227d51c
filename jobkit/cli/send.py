"""``jobkit send ACTOR [ARG ...]``: enqueue one job from the shell, checked before it is sent."""

from __future__ import annotations

import argparse
import json
from typing import Any

from brokers import check_broker
from jobkit.app import load_app
from jobkit.errors import JobkitError
from jobkit.output import print_json, stdout
from middleware.priorities import parse_level
from middleware.send_checks import check_arguments


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
        "--kwargs", default="{}", metavar="JSON", help="keyword arguments as a JSON object"
    )
    parser.add_argument(
        "--delay", type=int, default=None, metavar="MS", help="run no sooner than MS ms from now"
    )
    parser.add_argument(
        "--priority",
        metavar="LEVEL",
        help="critical, high, normal or low (default: the actor's own, normally normal)",
    )
    parser.add_argument("--json", action="store_true", help="print the sent message as JSON")
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
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as error:
        raise BadJobError(
            f"--kwargs is not valid JSON: {error.msg} at column {error.colno}"
        ) from None
    if not isinstance(kwargs, dict):
        raise BadJobError("--kwargs must be a JSON object, e.g. '{\"ms\": 10}'")
    positional = [parse_arg(text) for text in args.args]
    check_arguments(actor, positional, kwargs)  # before connecting; send() checks it again
    options = {}
    if args.priority is not None:
        try:
            options["priority"] = parse_level(args.priority)
        except ValueError as error:
            raise BadJobError(f"--priority: {error}") from None
    check_broker(broker)
    message = actor.send_with_options(
        args=tuple(positional), kwargs=kwargs, delay=args.delay, **options
    )
    if args.json:
        print_json(message.asdict())
    else:
        stdout.print(
            f"sent {actor.actor_name} to queue {message.queue_name!r} "
            f"(message id {message.message_id})"
        )
    return 0
