"""``python -m benchmarks`` (also ``jobkit bench``): the whole suite in one run.

    python -m benchmarks [--brokers redis,rabbitmq,embedded] [--messages N] [--repeat K]
                         [--records N] [--quick] [--scenarios LIST] [--json PATH]
                         [--plot PATH.png]

See ``benchmarks.suite`` for the scenarios and the method. A broker that does
not answer is skipped with one line; the others still run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.harness import BROKERS, URLS, broker_environment, machine_facts
from benchmarks.report import markdown, plot, print_report
from benchmarks.suite import DEFAULT_SCENARIOS, SCENARIOS, Runner, Settings, versions

QUICK_MESSAGES = 2000


def _list(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        # records-scale and records_scale name the same scenario.
        items = [item.strip().replace("-", "_") for item in text.split(",") if item.strip()]
        unknown = sorted(set(items) - set(choices))
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown: {', '.join(unknown)} (choose from {', '.join(choices)})"
            )
        return items

    return parse


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark brokers, jobkit against plain Dramatiq, and jobkit against "
        "Celery and RQ (when installed: pip install -e '.[bench]'), side by side in one run. "
        "Prints tables (with the targets' ratios); --json keeps every raw sample, --plot "
        "draws grouped bars with min-max error bars.",
    )
    parser.add_argument(
        "--brokers",
        type=_list(BROKERS),
        default=list(BROKERS),
        help="comma-separated: redis, rabbitmq, embedded (default: all three)",
    )
    parser.add_argument(
        "--scenarios",
        type=_list(SCENARIOS),
        default=list(DEFAULT_SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)} (default: all but "
        "records_scale, which writes --records job records)",
    )
    parser.add_argument(
        "--messages", type=int, metavar="N", help="jobs per drain and bulk send (20000)"
    )
    parser.add_argument("--repeat", type=int, metavar="K", help="runs per measurement (3)")
    parser.add_argument(
        "--records",
        type=int,
        metavar="N",
        help="finished job records written for records_scale (1000000; --quick 100000)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a short run (under 3 minutes): {QUICK_MESSAGES} messages, 1 repeat, "
        "smaller latency runs",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the report here")
    parser.add_argument("--plot", type=Path, metavar="PATH.png", help="draw the plot here")
    parser.add_argument(
        "--markdown", type=Path, metavar="PATH.md", help="write the tables as Markdown here"
    )
    return parser


def reachable(name: str, url: str) -> str | None:
    """Why ``name`` cannot be used, or None if it answers."""
    from brokers import build_broker, check_broker
    from jobkit.errors import JobkitError

    try:
        with broker_environment(name):
            broker = build_broker(url)
            try:
                check_broker(broker)
            finally:
                broker.close()
    except JobkitError as error:
        return str(error)
    return None


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from brokers import embedded

    messages = args.messages or (QUICK_MESSAGES if args.quick else 20_000)
    repeat = args.repeat or (1 if args.quick else 3)
    settings = Settings.of(messages, repeat, args.quick, args.records)
    home = Path(tempfile.mkdtemp(prefix="jk-bench-", dir="/tmp"))
    report: dict[str, Any] = {
        "settings": {
            "messages": messages,
            "repeat": repeat,
            "quick": args.quick,
            "records": settings.records,
            "scenarios": args.scenarios,
        },  # fmt: skip
        "brokers": {},
        "skipped": {},
    }
    try:
        urls: dict[str, str] = {}
        for name in args.brokers:
            try:
                url = embedded.ensure_server(home).url if name == "embedded" else URLS[name]
            except Exception as error:  # noqa: BLE001 - reported as a skipped broker
                reason: str | None = str(error)
            else:
                reason = reachable(name, url)
            if reason:
                console.print(f"[yellow]skipping {name}[/]: {reason}")
                report["skipped"][name] = reason
            else:
                urls[name] = url
        report["machine"] = {**machine_facts(), "servers": versions(urls)}
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            runner = Runner(settings, lambda label: None)
            task = progress.add_task(
                "starting", total=runner.step_count(args.scenarios, list(urls))
            )
            current = {"broker": ""}

            def step(label: str) -> None:
                description = f"{current['broker']} {label}".strip()
                progress.update(task, description=description)
                progress.advance(task)
                if not console.is_terminal:  # a log (CI) gets a line per measurement instead
                    done = int(progress.tasks[0].completed)
                    console.print(f"[{done}/{progress.tasks[0].total}] {description}")

            runner.step = step
            started = time.monotonic()
            for name, url in urls.items():
                current["broker"] = name
                result: dict[str, Any] = {}
                with broker_environment(name):
                    for scenario in args.scenarios:
                        if scenario == "peers":
                            continue
                        result[scenario] = getattr(runner, scenario)(url)
                report["brokers"][name] = result
            if "peers" in args.scenarios:
                current["broker"] = ""
                report["peers"] = runner.peers(urls)
            report["elapsed_s"] = round(time.monotonic() - started, 1)
    finally:
        embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)
    return report


def main(argv: Sequence[str] | None = None, prog: str = "python -m benchmarks") -> int:
    args = build_parser(prog).parse_args(argv)
    console = Console(stderr=True)
    try:
        report = run(args, console)
    except KeyboardInterrupt:
        print("benchmarks: interrupted", file=sys.stderr)
        return 130
    except TimeoutError as error:
        print(f"benchmarks: error: {error}", file=sys.stderr)
        return 1
    print_report(report, Console(width=None if sys.stdout.isatty() else 160))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"raw samples written to {args.json}")
    if args.markdown:
        args.markdown.write_text(markdown(report))
        console.print(f"tables written to {args.markdown}")
    if args.plot:
        plot(report, args.plot)
        console.print(f"plot written to {args.plot}")
    if not report["brokers"]:
        console.print("benchmarks: no broker could be measured")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
