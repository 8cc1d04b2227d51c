"""Long text is cut to a bound keeping its head and its tail, with a marker: one helper."""

from __future__ import annotations

import re

import pytest

from middleware.clipping import clip
from middleware.log_processors import MAX_FIELD, cap_exception, cap_fields

MARKER = re.compile(r" … \[([\d,]+) characters cut\] … ")


@pytest.mark.parametrize("limit", [90, 100, 2000, 8192])
@pytest.mark.parametrize("length", [0, 89, 2000, 2001, 8193, 900_000])
def test_text_is_bounded_with_its_head_and_tail_and_says_how_much_is_cut(
    limit: int, length: int
) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(length))
    clipped = clip(text, limit)
    assert len(clipped) <= limit
    if length <= limit:
        assert clipped == text
        return
    (count,) = MARKER.findall(clipped)
    head, tail = MARKER.split(clipped)[::2]
    assert text.startswith(head) and text.endswith(tail)
    assert len(head) + int(count.replace(",", "")) + len(tail) == length
    assert abs(len(head) - len(tail)) <= 1 and len(head) >= limit // 3


def test_a_bound_too_small_for_a_marker_keeps_the_head() -> None:
    assert clip("abcdefghij", 5) == "abcd…"
    assert clip("abcdefghij", 1) == "…"
    assert clip("abc", 3) == "abc"


def test_log_fields_and_tracebacks_keep_both_ends() -> None:
    long = "start " + "x" * (2 * MAX_FIELD) + " end"
    event = cap_exception(None, "error", {"exception": long})
    assert event["exception"].startswith("start ") and event["exception"].endswith(" end")
    assert len(event["exception"]) <= MAX_FIELD
    event = cap_fields(escape=False)(None, "error", {"exc_message": long})
    assert event["exc_message"].startswith("start ") and event["exc_message"].endswith(" end")
