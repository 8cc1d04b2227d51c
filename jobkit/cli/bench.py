"""``jobkit bench``: the benchmark suite (``python -m benchmarks``) from the jobkit command.

The suite is run as its own process, never imported: product code does not
depend on ``benchmarks/`` (a checkout's folder, not part of the package).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

from jobkit.errors import JobkitError


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "bench",
        help="run the benchmark suite (python -m benchmarks)",
        description="Run the benchmark suite; every option is python -m benchmarks's "
        "(see jobkit bench --help-suite).",
        add_help=True,
    )
    parser.add_argument(
        "suite_args",
        nargs=argparse.REMAINDER,
        metavar="OPTIONS",
        help="options of python -m benchmarks: --brokers, --scenarios, --messages, --repeat, "
        "--quick, --json, --plot",
    )
    parser.add_argument(
        "--help-suite", action="store_true", help="show the suite's own options and exit"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("benchmarks") is None:
        raise JobkitError(
            "jobkit bench runs the benchmark suite of a jobkit checkout (its benchmarks/ "
            "folder, not installed with the package): run it from the checkout's directory"
        )
    suite_args = ["--help"] if args.help_suite else args.suite_args
    return subprocess.call([sys.executable, "-m", "benchmarks", *suite_args])
