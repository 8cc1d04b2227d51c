"""``jobkit bench``: the benchmark suite (``python -m benchmarks``) from the jobkit command."""

from __future__ import annotations

import argparse


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
    from benchmarks.__main__ import main

    if args.help_suite:
        return main(["--help"], prog="jobkit bench")
    return main(args.suite_args, prog="jobkit bench")
