"""The ``jobkit`` command: ``jobkit --help`` lists the subcommands, each has its own ``--help``.

Exit codes are ``jobkit.exit_codes``: a usage error (a bad option, found by argparse or
by a converter of ``jobkit.arguments``) is ``USAGE``, any other failure ``ERROR``; both
are one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence

import pika.exceptions
import redis

from brokers.urls import BROKER_URL_ENV
from jobkit import demo, exit_codes
from jobkit.app import APP_ENV, DEFAULT_APP
from jobkit.arguments import Parser, like_setting
from jobkit.errors import JobkitError, UsageError
from jobkit.settings import current

from . import bench, dead_letter_commands, embedded_commands, jobs, queues, send, stats, worker
from .environment import add_epilogs

COMMANDS = (
    demo,
    worker,
    queues,
    stats,
    send,
    jobs,
    dead_letter_commands,
    bench,
    embedded_commands,
)
#: Commands that pass options they do not know on: to dramatiq, to the benchmark suite.
PASS_ON = {"worker": "dramatiq_args", "bench": "suite_args"}


def build_parser() -> Parser:
    parser = Parser(
        prog="jobkit",
        description="Background jobs on Dramatiq: run the demo, inspect queues, send jobs and "
        "follow them by id, inspect and replay dead letters, manage the embedded broker.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show full tracebacks on errors"
    )
    parser.add_argument("--version", action="version", version=f"jobkit {jobkit_version()}")
    parser.add_argument(
        "--app",
        type=like_setting("app"),
        metavar="MODULE[:BROKER]",
        help=f"the module that declares your actors (default: ${APP_ENV}, else {DEFAULT_APP})",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subcommands)
    add_epilogs(parser)
    return parser


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Parser:
    """The parser of the command ``args`` were parsed for, e.g. ``jobkit dead-letters list``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None)
            if chosen in action.choices:
                return command_parser(action.choices[chosen], args)
    assert isinstance(parser, Parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    command = command_parser(parser, args)
    if args.command in PASS_ON:
        passed = PASS_ON[args.command]
        setattr(args, passed, [*unknown, *getattr(args, passed)])
    elif unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        current()  # every setting is checked before any command runs (one line if bad)
        return int(args.handler(args) or 0)
    except UsageError as error:  # found after parsing, e.g. ids and --all together
        print(f"jobkit: error: {command.usage_line(str(error))}", file=sys.stderr)
        return exit_codes.USAGE
    except KeyboardInterrupt:
        print("jobkit: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except Exception as error:
        if args.verbose:
            raise
        print(f"jobkit: error: {one_line(error)}", file=sys.stderr)
        return exit_codes.ERROR


def jobkit_version() -> str:
    """The installed distribution's version (pyproject.toml)."""
    try:
        return importlib.metadata.version("jobkit")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown (not installed)"


def one_line(error: BaseException) -> str:
    """A single line for ``error``; broker errors get what-where-how wording."""
    if isinstance(error, JobkitError):
        return str(error)
    if isinstance(error, redis.RedisError | pika.exceptions.AMQPError):
        text = (str(error).strip() or type(error).__name__).splitlines()[0]
        return (
            f"broker error ({type(error).__name__}): {text}; check that the broker in "
            f"{BROKER_URL_ENV} is running (rerun with --verbose for details)"
        )
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    return f"{type(error).__name__}: {text} (rerun with --verbose for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
