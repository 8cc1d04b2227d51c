"""Long text cut to a bound, keeping its head and its tail: the one way jobkit shortens text.

An error's message says what went wrong at its start (``ValueError: could not
parse ...``) and a traceback says where at its end; keeping only one end loses
the other. :func:`clip` keeps both, with a marker that says how much is gone:
``head … [812,345 characters cut] … tail``.
"""

from __future__ import annotations

_MARKER = " … [{:,} characters cut] … "
#: Too little room for a marker: the head and an ellipsis.
_ELLIPSIS = "…"


def clip(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its head and tail around a marker.

    The result has at most ``limit`` characters (at least one: a ``limit`` below 1
    gives ``"…"``). Below about 60 there is no room for a marker worth having: the
    first ``limit - 1`` characters and ``"…"``.
    """
    if len(text) <= limit:
        return text
    # Sized for the longest count possible, so the real one (smaller) never overflows.
    room = limit - len(_MARKER.format(len(text)))
    if room < 2 * len(_MARKER):
        return text[: max(limit - 1, 0)] + _ELLIPSIS
    head = room - room // 2
    tail = room // 2
    return text[:head] + _MARKER.format(len(text) - head - tail) + text[len(text) - tail :]
