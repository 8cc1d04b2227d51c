"""Printing helpers shared by the subcommands: JSON for scripts, rich tables for people.

A listing is printed by :func:`print_listing`: ``--json`` gives a JSON array (``[]`` when
nothing matches), people get a table, or one line saying that nothing matched.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

# Piped output gets room for every column (rich assumes 80 columns off a terminal), unless
# COLUMNS says how wide it may be.
stdout = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
stderr = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def print_line(text: str) -> None:
    """One plain line on stdout (no markup, no highlighting)."""
    stdout.print(text, markup=False, highlight=False, soft_wrap=True)


#: How much of an id a table shows on a narrower terminal (every command takes a prefix).
SHORT_ID = 8
#: From this width on, tables show ids whole.
WHOLE_IDS_FROM = 120


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    empty: str = "nothing to show",
    whole: Collection[str] = (),
    ids: Collection[str] = (),
) -> None:
    """A table, or the one line ``empty`` when there are no rows.

    Columns named in ``whole`` (names people copy) are never cut or wrapped, nor are
    numbers (right-aligned): the other columns shrink to fit. Where that is too wide
    for the terminal, the borders go. Columns in ``ids`` show whole from
    :data:`WHOLE_IDS_FROM` columns on; on a narrower terminal only their first
    :data:`SHORT_ID` characters, which every command taking an id accepts.
    """
    given = [list(row) for row in rows]
    if not given:
        print_line(empty)
        return
    numeric = [_numeric(row[i] for row in given) for i in range(len(columns))]
    texts = [["-" if value is None else str(value) for value in row] for row in given]
    kept = set(whole) | set(ids)
    if ids and stdout.width < WHOLE_IDS_FROM:
        short = [i for i, column in enumerate(columns) if column in ids]
        texts = [[v[:SHORT_ID] if i in short else v for i, v in enumerate(row)] for row in texts]
    table = _table(title, columns, texts, numeric, whole=kept)
    if _too_wide(table):
        # Too wide for the terminal with borders (e.g. 80 columns): drop them before cutting.
        table = _table(title, columns, texts, numeric, whole=kept, compact=True)
    stdout.print(table)


def _numeric(values: Iterable[Any]) -> bool:
    return all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values
    )


def _table(
    title: str,
    columns: Sequence[str],
    rows: list[list[str]],
    numeric: list[bool],
    *,
    whole: Collection[str],
    compact: bool = False,
) -> Table:
    table = Table(title=title, title_justify="left")
    if compact:
        table.box, table.show_edge, table.collapse_padding = box.SIMPLE_HEAD, False, True
    for index, column in enumerate(columns):
        kept = column in whole
        width = None
        if kept:
            width = max(len(row[index]) for row in rows)
        elif numeric[index]:  # a count cut to "1…" is worse than none; its header wraps at spaces
            width = max(*(len(word) for word in column.split()), *(len(r[index]) for r in rows))
        table.add_column(
            column, justify="right" if numeric[index] else "left", no_wrap=kept, min_width=width
        )
    for row in rows:
        table.add_row(*row)
    return table


def _too_wide(table: Table) -> bool:
    unbounded = stdout.options.update(max_width=10_000)
    return Measurement.get(stdout, unbounded, table).minimum > stdout.width


def print_listing(
    items: Sequence[Any],
    *,
    as_json: bool,
    title: str,
    columns: Sequence[str],
    row: Callable[[Any], Sequence[Any]],
    empty: str,
    whole: Collection[str] = (),
    ids: Collection[str] = (),
) -> None:
    """``items`` as a JSON array (``--json``; ``[]`` if none), else :func:`print_table`."""
    if as_json:
        print_json(list(items))
    else:
        rows = [row(item) for item in items]
        print_table(title, columns, rows, empty=empty, whole=whole, ids=ids)
