"""``jobkit embedded status|start|stop``: the embedded Valkey server behind the default broker."""

from __future__ import annotations

import argparse
from pathlib import Path

from brokers import embedded
from brokers.urls import configured_spec
from jobkit import exit_codes
from jobkit.errors import BrokerConfigError
from jobkit.output import print_json, print_table, stdout


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "embedded",
        help="status, start or stop of the embedded Valkey server",
        description="Inspect, start or stop the embedded Valkey server used when "
        "JOBKIT_BROKER_URL is unset or embedded://. Workers, `jobkit send` and the demo "
        "start it on demand; inspecting commands (queues, dead-letters list/show) never do.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status",
        help="is it running; pid, socket, memory",
        description="Show whether the "
        "embedded server runs, with its pid, socket, version, memory and key count. "
        "Exit code 0 when running, 3 when not.",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(handler=run_status)
    start = actions.add_parser(
        "start",
        help="start it in the background (if it is not running)",
        description="Start the embedded server under JOBKIT_HOME (or the embedded:// "
        "directory) in the background; it keeps running until `jobkit embedded stop`.",
    )
    start.add_argument("--json", action="store_true", help="print JSON instead of text")
    start.set_defaults(handler=run_start)
    stop = actions.add_parser(
        "stop",
        help="shut it down (data kept on disk)",
        description="Shut the embedded "
        "server down after flushing its append-only file; queued jobs survive a restart.",
    )
    stop.add_argument("--json", action="store_true", help="print JSON instead of text")
    stop.set_defaults(handler=run_stop)


def _home() -> Path:
    spec = configured_spec()
    if spec.kind != "embedded" or spec.home is None:
        raise BrokerConfigError(
            f"JOBKIT_BROKER_URL points at {spec.display_url}, not the embedded server; "
            "unset it (or use embedded://DIR) to manage the embedded server"
        )
    return spec.home


def run_status(args: argparse.Namespace) -> int:
    facts = embedded.status(_home())
    if args.json:
        print_json(facts)
    else:
        print_table("embedded broker", ("fact", "value"), sorted(facts.items()))
    return exit_codes.OK if facts["running"] else exit_codes.NOT_RUNNING


def run_start(args: argparse.Namespace) -> int:
    home = _home()
    paths = embedded.ensure_server(home)
    if args.json:
        print_json({"home": str(home), "socket": str(paths.socket), "running": True})
    else:
        stdout.print(f"embedded server for {home} running")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    home = _home()
    stopped = embedded.stop(home)
    if args.json:
        print_json({"home": str(home), "was_running": stopped, "running": False})
    elif stopped:
        stdout.print(f"embedded server for {home} stopped")
    else:
        stdout.print(f"embedded server for {home} was not running")
    return 0
