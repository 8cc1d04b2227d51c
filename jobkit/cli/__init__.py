"""The ``jobkit`` command: ``jobkit --help`` lists the subcommands, each has its own ``--help``."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence

import pika.exceptions
import redis

from brokers.urls import BROKER_URL_ENV, HOME_ENV
from jobkit import demo, exit_codes
from jobkit.app import APP_ENV, DEFAULT_APP
from jobkit.errors import JobkitError
from jobkit.settings import current

from . import bench, dead_letter_commands, embedded_commands, queues, send, stats, worker

COMMANDS = (demo, worker, queues, stats, send, dead_letter_commands, bench, embedded_commands)

EPILOG = f"""\
environment:
  {BROKER_URL_ENV}   broker to use: redis://, rediss://, unix://, amqp://, amqps://,
                      embedded://[DIR]; unset = embedded Valkey server under $JOBKIT_HOME
  {HOME_ENV}          data directory of the embedded server (default: ./.jobkit)
  {APP_ENV}           module that declares your actors, as --app (default: actors)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobkit",
        description="Background jobs on Dramatiq: run the demo, inspect queues, send jobs, "
        "inspect and replay dead letters, manage the embedded broker.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show full tracebacks on errors"
    )
    parser.add_argument("--version", action="version", version=f"jobkit {jobkit_version()}")
    parser.add_argument(
        "--app",
        metavar="MODULE[:BROKER]",
        help=f"the module that declares your actors (default: ${APP_ENV}, else {DEFAULT_APP})",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # `jobkit worker` passes options it does not know on to dramatiq.
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command == "bench":
        args.suite_args = [*unknown, *args.suite_args]
    elif unknown and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "worker":
        args.dramatiq_args = [*unknown, *args.dramatiq_args]
    try:
        current()  # every setting is checked before any command runs (one line if bad)
        return int(args.handler(args) or 0)
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
