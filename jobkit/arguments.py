"""Command-line arguments for the fronts: typed option converters and one-line usage errors.

Every option is checked as it is parsed, by a converter here (``type=whole(1)``,
``type=duration_ms``, ...) or argparse's ``choices``. A bad value, an unknown option or a
missing argument is one line that names the option, with where to read more, and exit
code ``USAGE``: ``jobkit: error: --limit: must be a whole number >= 1, got '0' (see jobkit
dead-letters list --help)``. No usage dump: the help is one ``--help`` away.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import textwrap
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

from pydantic import TypeAdapter, ValidationError

from brokers.id_prefixes import MIN_PREFIX
from jobkit import exit_codes
from jobkit.errors import JobkitError
from jobkit.settings import Settings, check_http_url, parse_duration_ms

#: argparse's own wording of an error about one argument: ``argument --limit/-l: ...``.
_ABOUT_ARGUMENT = re.compile(r"argument (\S+): (.*)", re.S)
#: argparse's wording of a value outside ``choices`` (quoted choices up to Python 3.12).
_INVALID_CHOICE = re.compile(r"invalid choice: (.*) \(choose from (.*)\)", re.S)
_ID_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
#: Longest id taken: Dramatiq's are 36 characters; far longer is a paste gone wrong.
MAX_ID = 200


class Parser(argparse.ArgumentParser):
    """argparse with jobkit's errors: one line, naming the option, exit code ``USAGE``.

    Subcommands' parsers are made of the same class (argparse's ``add_subparsers`` uses
    its parent's), so every command gets it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(exit_codes.USAGE, f"jobkit: error: {self.usage_line(message)}\n")

    def usage_line(self, message: str) -> str:
        """``message`` as one line naming the option, then where its help is."""
        about = _ABOUT_ARGUMENT.fullmatch(message.strip())
        if about is not None:
            names = about.group(1).split("/")
            name = next((n for n in names if n.startswith("--")), names[0])
            message = f"{name}: {about.group(2)}"
        choice = _INVALID_CHOICE.search(message)
        if choice is not None:
            options = ", ".join(option.strip("'") for option in choice.group(2).split(", "))
            given = choice.group(1)
            message = f"{message[: choice.start()]}invalid choice {given}; choose from {options}"
        return f"{' '.join(message.split())} (see {self.prog} --help)"


class HelpFormatter(argparse.HelpFormatter):
    """Prose is filled to the terminal's width; indented lines (a list such as the
    ``environment:`` epilog) are kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines: list[str] = []
        paragraph: list[str] = []

        def flush() -> None:
            if paragraph:
                lines.extend(
                    textwrap.wrap(
                        " ".join(paragraph),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                    )
                )
                paragraph.clear()

        for line in text.splitlines():
            if line.startswith(" ") or not line.strip():
                flush()
                lines.append(indent + line if line.strip() else "")
            else:
                paragraph.append(line.strip())
        flush()
        return "\n".join(lines)


def _bad(accepted: str, text: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}")


def whole(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """A converter for a whole number from ``minimum`` (to ``maximum``)."""
    most = f" and <= {maximum}" if maximum is not None else ""
    accepted = f"a whole number >= {minimum}{most}"

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _bad(accepted, text) from None
        if value < minimum or (maximum is not None and value > maximum):
            raise _bad(accepted, text)
        return value

    convert.__name__ = "whole"
    return convert


DURATION_ACCEPTED = "a duration >= 0: milliseconds, or e.g. 30s, 15m, 12h, 7d, 2w"


def duration_ms(text: str) -> int:
    """A non-negative duration (``1500``, ``30s``, ``15m``, ``12h``, ``7d``, ``2w``) in ms."""
    try:
        return parse_duration_ms(text)
    except ValueError:
        raise _bad(DURATION_ACCEPTED, text) from None


def moment_ms(text: str) -> int:
    """An age (``2h``: that long ago) or an ISO-8601 time (UTC if it names no zone), in epoch ms."""
    try:
        return int(time.time() * 1000) - parse_duration_ms(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _bad("an age (30m, 2h, 7d) or an ISO-8601 time (2025-01-31T12:00)", text) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def name(text: str) -> str:
    """A queue or actor name: not blank."""
    if not text.strip():
        raise _bad("a name, not blank", text)
    return text.strip()


def id_prefix(text: str) -> str:
    """An id, or its first characters (at least ``MIN_PREFIX``), as ``jobkit`` lists it."""
    if len(text) > MAX_ID:  # not echoed whole: it would not be one line worth reading
        raise argparse.ArgumentTypeError(
            f"must be an id of at most {MAX_ID} characters, got {len(text)} starting {text[:20]!r}"
        )
    accepted = f"an id or its first {MIN_PREFIX} or more characters"
    if len(text) < MIN_PREFIX:
        raise _bad(accepted, text)
    if not _ID_TEXT.fullmatch(text):
        error = _bad(accepted, text)
        raise argparse.ArgumentTypeError(f"{error} (ids are letters, digits and - _ . :)")
    return text


def seconds(text: str) -> float:
    """A number of seconds >= 0, whole or not (``30``, ``0.5``)."""
    accepted = "a number of seconds >= 0, e.g. 30 or 0.5"
    try:
        value = float(text)
    except ValueError:
        raise _bad(accepted, text) from None
    if not math.isfinite(value) or value < 0:
        raise _bad(accepted, text)
    return value


def one_or_more_of(choices: Sequence[str], label: str) -> Callable[[str], list[str]]:
    """A converter for one or more of ``choices``, comma-separated (``failed,cancelled``).

    With ``action="extend"`` the option may also be repeated.
    """
    accepted = f"one or more of {', '.join(choices)} (comma-separated)"

    def convert(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",")]
        if not all(value in choices for value in values):
            raise _bad(accepted, text)
        return values

    convert.__name__ = label
    return convert


def http_url(text: str) -> str:
    """An ``http://`` or ``https://`` URL that names a host, e.g. a metrics endpoint."""
    accepted = "write http(s)://host:port/path, e.g. http://127.0.0.1:9191/metrics"
    try:
        return check_http_url(text, "not an http(s) URL", accepted, likely="http")
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error}, got {text!r}") from None


def json_object(text: str) -> dict[str, Any]:
    """A JSON object, e.g. ``{"ms": 10}``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({error.msg} at column {error.colno}): {text!r}"
        ) from None
    if not isinstance(value, dict):
        raise _bad("a JSON object, e.g. '{\"ms\": 10}'", text)
    return value


def checked(parse: Callable[[str], Any], label: str) -> Callable[[str], Any]:
    """A converter from ``parse``, whose ValueError (or jobkit error) explains a bad value."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (ValueError, JobkitError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = label
    return convert


def like_setting(field: str) -> Callable[[str], Any]:
    """A converter that checks a value as the settings table checks its variable.

    ``--app`` takes what ``JOBKIT_APP`` takes, by the same check, with the same words.
    """
    info = Settings.model_fields[field]
    annotated: Any = Annotated[info.annotation, *info.metadata]  # the field's type and checks
    adapter: TypeAdapter[Any] = TypeAdapter(annotated)

    def convert(text: str) -> Any:
        try:
            return adapter.validate_python(text)
        except ValidationError as error:
            item = error.errors(include_url=False)[0]
            cause = (item.get("ctx") or {}).get("error")
            raise _bad(str(cause) if cause else item["msg"], text) from None

    convert.__name__ = field
    return convert
