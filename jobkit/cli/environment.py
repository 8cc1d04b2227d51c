"""The ``environment:`` epilog of each command's help, made from the settings table.

Each command lists the variables it reads (:data:`READS`, by field of
:class:`jobkit.settings.Settings`); the names, docs and defaults come from the table
itself, so the help cannot drift from docs/configuration.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import textwrap
from collections.abc import Iterable
from pathlib import Path

from jobkit.settings import Settings, env_names

#: The settings each command reads, by command path; an action adds to its command's.
READS: dict[str, tuple[str, ...]] = {
    "": ("app", "broker_url", "home"),
    "demo": ("broker_url", "home", "state_url"),
    "worker": (
        "app",
        "broker_url",
        "home",
        "state_url",
        "log_format",
        "log_level",
        "heartbeat_timeout_ms",
        "metrics",
        "metrics_host",
        "metrics_port",
    ),
    "queues": ("app", "broker_url", "home", "state_url"),
    "stats": ("metrics_host", "metrics_port"),
    "send": ("app", "broker_url", "home", "signing_key", "max_message_bytes"),
    "jobs": ("app", "broker_url", "home", "state_url", "job_records"),
    # A job cancelled before it ran is finished here: its record expires after the TTL.
    "jobs cancel": ("job_ttl",),
    "dead-letters": ("app", "broker_url", "home", "state_url"),
    "dead-letters show": ("log_redact", "log_max_value"),
    "dead-letters replay": ("signing_key", "max_message_bytes"),
    "embedded": ("broker_url", "home"),
    "bench": (),
}
#: Variables that are not jobkit settings (the benchmark suite's own), as name -> meaning.
OTHERS: dict[str, tuple[tuple[str, str], ...]] = {
    "bench": (
        ("JOBKIT_BENCH_REDIS_URL", "the suite's Redis (flushed by the runs)"),
        ("JOBKIT_BENCH_RABBITMQ_URL", "the suite's RabbitMQ"),
    ),
}
#: Said under every list: the rest of the table is checked too, before any command runs.
FOOTER = "Every JOBKIT_* variable is checked before a command runs (docs/configuration.md)."
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_SEE = re.compile(r"\s*See \[[^\]]*\]\([^)]*\)(,? (and )?\[[^\]]*\]\([^)]*\))*\.?")
_SENTENCE_END = re.compile(r"(?<=[a-z)])\. (?=[A-Z`])")


def plain(doc: str) -> str:
    """A table doc as help text: its first sentence, without links or backticks."""
    text = _LINK.sub(r"\1", _SEE.sub("", doc)).replace("`", "")
    return _SENTENCE_END.split(text, maxsplit=1)[0].rstrip(".")


def default_of(name: str) -> str:
    """How the table shows the default of field ``name``, without Markdown."""
    field = Settings.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    shown = extra.get("shown")
    if shown is None:
        value = field.get_default(call_default_factory=True)
        if value is None or value == "" or value == ():
            shown = "unset"
        elif isinstance(value, bool):
            shown = "on" if value else "off"
        elif isinstance(value, tuple | list):
            shown = ", ".join(map(str, value))
        else:
            shown = str(value) if not isinstance(value, Path) else f"./{value}"
    return str(shown).replace("`", "")


def epilog(
    fields: Iterable[str], others: Iterable[tuple[str, str]] = (), width: int | None = None
) -> str:
    """``environment:`` and one entry per variable: name, meaning, default.

    ``width`` defaults to argparse's own: the terminal's, less 2.
    """
    width = width or shutil.get_terminal_size().columns - 2
    entries = [
        (
            env_names(field)[0],
            f"{plain(Settings.model_fields[field].description or '')} "
            f"(default: {default_of(field)})",
        )
        for field in dict.fromkeys(fields)
    ]
    entries += others
    indent = max((len(variable) for variable, _ in entries), default=0) + 4
    lines = ["environment:"]
    for variable, meaning in entries:
        lines += textwrap.wrap(
            meaning,
            max(width, indent + 30),
            initial_indent=f"  {variable}".ljust(indent),
            subsequent_indent=" " * indent,
            break_on_hyphens=False,
        )
    return "\n".join([*lines, "", FOOTER])


def reads(path: str) -> tuple[str, ...]:
    """The fields command ``path`` reads: its command's, then its own."""
    command = path.split(" ")[0]
    own = READS.get(path, ()) if path != command else ()
    return (*READS[command], *own)


def add_epilogs(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give ``parser`` and every subcommand under it its ``environment:`` epilog."""
    if path not in READS and path.split(" ")[0] not in READS:
        raise KeyError(f"jobkit.cli.environment.READS says nothing of {path!r}")
    parser.epilog = epilog(reads(path), OTHERS.get(path.split(" ")[0], ()))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                add_epilogs(sub, f"{path} {name}".strip())
