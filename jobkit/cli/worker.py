"""``jobkit worker [DRAMATIQ OPTIONS]``: Dramatiq's own CLI, with jobkit's checks and logging."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import dramatiq.cli as dramatiq_cli

from brokers import build_broker, check_broker
from jobkit.app import app_name
from middleware.dramatiq_seam import wrap_cli_logging
from middleware.log_config import configure_logging, resolve_format


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "worker",
        help="run workers (dramatiq actors) with jobkit's logging in every process",
        description="Check the broker configuration and that the broker answers, then run "
        "Dramatiq's own CLI in this process: `jobkit worker -p 2 -t 8` is `dramatiq actors "
        "-p 2 -t 8`, except that the main process's own log lines also use "
        "JOBKIT_LOG_FORMAT (stock `dramatiq` prints them as text; with --skip-logging it "
        "drops them). Options after the command go to dramatiq unchanged "
        "(see `dramatiq --help`); the modules default to `actors`.",
        add_help=True,
    )
    parser.add_argument(
        "dramatiq_args",
        nargs=argparse.REMAINDER,
        metavar="DRAMATIQ OPTIONS",
        help="passed to dramatiq, e.g. -p 2 -t 8 -Q default",
    )
    parser.set_defaults(handler=run)


def dramatiq_argv(extra: list[str], app: str | None = None) -> list[str]:
    """``dramatiq`` arguments: the app's module first unless the caller names modules."""
    if extra and not extra[0].startswith("-"):
        return extra
    return [app_name(app), *extra]


def run(args: argparse.Namespace) -> int:
    fmt = resolve_format()  # a bad JOBKIT_LOG_FORMAT fails here, as one line
    # A throwaway broker, not `import actors`: forked workers must build their own
    # (a Redis broker's id, and so its heartbeat, is per instance).
    probe = build_broker()  # a bad JOBKIT_BROKER_URL fails here, as one line
    try:
        check_broker(probe)
    finally:
        probe.close()
    _log_like_jobkit(configure_logging, fmt)
    sys.argv = ["dramatiq", *dramatiq_argv(list(args.dramatiq_args), args.app)]
    return int(dramatiq_cli.main() or 0)


def _log_like_jobkit(configure_logging: Any, fmt: str) -> None:
    """Reformat the handlers Dramatiq's CLI installs: main process, workers and forks."""
    wrap_cli_logging(lambda setup: _then_configure(setup, configure_logging, fmt))


def _then_configure(setup: Any, configure_logging: Any, fmt: str) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        logger = setup(*args, **kwargs)
        configure_logging(fmt, force=True)
        return logger

    return wrapped
