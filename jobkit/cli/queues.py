"""``jobkit queues``: ready / delayed / in-flight / dead-lettered counts per queue."""

from __future__ import annotations

import argparse

from brokers import check_broker, queue_depths, spec_of
from jobkit.app import load_app
from jobkit.arguments import name
from jobkit.output import print_json, print_table
from middleware.priorities import LEVELS


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "queues",
        help="message counts per queue on the configured broker",
        description="For every queue (those declared by the app, see --app; those given with "
        "--queue, and on Redis/embedded every queue found in the broker), print ready "
        "(total and per priority level), delayed, in-flight and dead-lettered counts. "
        "Per-level and in-flight counts exist on Redis/embedded only ('-' on RabbitMQ).",
    )
    parser.add_argument(
        "--queue",
        "-q",
        action="append",
        type=name,
        default=[],
        metavar="NAME",
        help="also report this queue (repeatable); needed on RabbitMQ for queues no actor declares",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print JSON instead of a table: {"broker": URL, "queues": [...]}',
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    broker = load_app(args.app, attach_only=True)  # it only looks: starts no embedded server
    check_broker(broker)
    depths = queue_depths(broker, set(args.queue))
    if args.json:
        print_json(
            {
                "broker": spec_of(broker).display_url,
                "queues": [depth.as_dict() for depth in depths],
            }
        )
        return 0
    where = spec_of(broker).display_url
    print_table(
        f"queues on {where}",
        ("queue", "ready", *LEVELS, "delayed", "in flight", "dead-lettered"),
        [
            (
                d.queue,
                d.ready,
                *((d.levels or {}).get(level) for level in LEVELS),
                d.delayed,
                d.in_flight,
                d.dead_lettered,
            )
            for d in depths
        ],
        empty=f"no queues on {where}: the app declares none and the broker holds none",
        whole=("queue",),
    )
    return 0
