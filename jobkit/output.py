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

from rich.console import Console
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


def _numeric(values: Iterable[Any]) -> bool:
    return all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values
    )


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    empty: str = "nothing to show",
    whole: Collection[str] = (),
) -> None:
    """A table, or the one line ``empty`` when there are no rows.

    Columns named in ``whole`` (ids people copy) are never cut or wrapped: the others
    shrink to fit. Columns of numbers are right-aligned.
    """
    rows = [list(row) for row in rows]
    if not rows:
        print_line(empty)
        return
    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        kept = column in whole
        width = max(len(str(row[index])) for row in rows) if kept else None
        table.add_column(
            column,
            justify="right" if _numeric(row[index] for row in rows) else "left",
            no_wrap=kept,
            min_width=width,
        )
    for row in rows:
        table.add_row(*("-" if value is None else str(value) for value in row))
    stdout.print(table)


def print_listing(
    items: Sequence[Any],
    *,
    as_json: bool,
    title: str,
    columns: Sequence[str],
    row: Callable[[Any], Sequence[Any]],
    empty: str,
    whole: Collection[str] = (),
) -> None:
    """``items`` as a JSON array (``--json``; ``[]`` if none), else :func:`print_table`."""
    if as_json:
        print_json(list(items))
    else:
        print_table(title, columns, [row(item) for item in items], empty=empty, whole=whole)
