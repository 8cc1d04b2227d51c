"""Ids given by a unique prefix, git-style: ``f8f0ae8f`` for ``f8f0ae8f-6b3e-44e1-…``.

Generic over what the ids name (dead letters today, jobs later): a store finds the
candidates that start with the prefix (Redis: a ``SCAN`` with ``MATCH prefix*``), and
:func:`resolve_id` picks the one meant or says, in one line, why it cannot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from jobkit.errors import JobkitError

#: Shortest prefix accepted: four characters, as git's shortest abbreviation.
MIN_PREFIX = 4
_GLOB_SPECIALS = re.compile(r"([*?\[\]\\])")


class IdNotResolved(JobkitError, LookupError):
    """An id prefix names no record, or more than one."""


class UnknownId(IdNotResolved):
    """No record's id starts with the prefix."""


class AmbiguousId(IdNotResolved):
    """Several records' ids start with the prefix (or it is too short to tell)."""


def match_pattern(prefix: str) -> str:
    """A Redis ``MATCH`` pattern for ids starting with ``prefix`` (glob characters escaped)."""
    return _GLOB_SPECIALS.sub(r"\\\1", prefix) + "*"


def resolve_id(prefix: str, candidates: Iterable[str], *, what: str, listing: str) -> str:
    """The one id of ``candidates`` that is ``prefix`` or starts with it.

    ``what`` names the records (``"dead letter"``) and ``listing`` the command that
    lists them, for the error's fix. An exact id wins over longer ones it prefixes.
    Raises :class:`AmbiguousId` for a prefix shorter than :data:`MIN_PREFIX` or one
    that several ids share, :class:`UnknownId` when none starts with it.
    """
    if len(prefix) < MIN_PREFIX:
        raise AmbiguousId(
            f"{what} id {prefix!r} is too short: give at least {MIN_PREFIX} characters "
            f"of the id (`{listing}` shows them)"
        )
    matches = sorted({c for c in candidates if c.startswith(prefix)})
    if prefix in matches or len(matches) == 1:
        return prefix if prefix in matches else matches[0]
    if not matches:
        raise UnknownId(f"no {what} with id starting {prefix!r}; `{listing}` shows them")
    shown = ", ".join(matches[:3]) + (", …" if len(matches) > 3 else "")
    raise AmbiguousId(
        f"{len(matches)} {what}s have ids starting {prefix!r} ({shown}); "
        "type more of the id to pick one"
    )
