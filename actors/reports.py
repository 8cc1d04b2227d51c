"""Reports: totals and counts by group from a CSV or JSON-lines file, written as CSV and JSON.

    from actors.reports import build_report
    build_report.send("/data/orders.csv", "/reports/orders-by-country", group_by="country",
                      sum_fields=["amount"])

The source is read one row at a time (memory stays flat however large it is);
progress is logged every ``PROGRESS_EVERY`` rows. The outputs
(``<out>.csv`` and ``<out>.json``) are written to temporary files and renamed, so
a reader never sees half a report. A source that does not exist yet is retried
(an upload may still be arriving); a malformed source (a row that is not valid
JSON, a missing column, a value that is not a number) raises ``ReportInputError``
and is dead-lettered at once, with the line number.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import dramatiq

from actors.outputs import write_atomically

QUEUE = "reports"
PROGRESS_EVERY = 100_000

logger = logging.getLogger("jobkit.reports")


class ReportInputError(Exception):
    """The source cannot make a report (bad format, missing column, not a number)."""


class SourceNotReady(Exception):
    """The source file does not exist (yet): retried."""


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs from a ``.csv`` (with a header) or ``.jsonl`` file, streamed."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ReportInputError(f"{path}: not a .csv or .jsonl file")
    with path.open(newline="", encoding="utf-8") as source:
        if suffix == ".csv":
            for index, row in enumerate(csv.DictReader(source), start=2):
                yield index, row
            return
        for index, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ReportInputError(f"{path}:{index}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ReportInputError(f"{path}:{index}: a JSON object per line is expected")
            yield index, row


def aggregate(
    path: Path, group_by: str, sum_fields: list[str]
) -> tuple[dict[str, dict[str, Any]], int]:
    """Per group: the row count and the total of each of ``sum_fields``; and the rows read."""
    # Decimal, so money adds up exactly (0.1 + 0.2 is 0.3, not 0.30000000000000004).
    groups: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"count": 0, **{name: Decimal(0) for name in sum_fields}}
    )
    rows = 0
    for line, row in read_rows(path):
        if group_by not in row:
            raise ReportInputError(f"{path}:{line}: no {group_by!r} column")
        totals = groups[str(row[group_by])]
        totals["count"] += 1
        for name in sum_fields:
            try:
                value = Decimal(str(row[name]).strip())
            except KeyError:
                raise ReportInputError(f"{path}:{line}: no {name!r} column") from None
            except (InvalidOperation, ValueError):
                value = Decimal("NaN")
            if not value.is_finite() or isinstance(row[name], bool | None):
                raise ReportInputError(f"{path}:{line}: {name}={row[name]!r} is not a number")
            totals[name] += value
        rows += 1
        if rows % PROGRESS_EVERY == 0:
            logger.info("report progress: %d rows of %s read", rows, path.name)
    for totals in groups.values():
        for name in sum_fields:
            totals[name] = _number(totals[name])
    return dict(groups), rows


def _number(total: Decimal) -> int | float:
    return int(total) if total == total.to_integral_value() else float(total)


@dramatiq.actor(queue_name=QUEUE, max_retries=5, min_backoff=10_000, throws=(ReportInputError,))
def build_report(
    source: str, output: str, group_by: str, sum_fields: list[str] | None = None
) -> None:
    """Aggregate ``source`` by ``group_by``; write ``<output>.csv`` and ``<output>.json``."""
    path = Path(source)
    if not path.exists():
        raise SourceNotReady(f"{source}: no such file (yet)")
    fields = list(sum_fields or [])
    groups, rows = aggregate(path, group_by, fields)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(groups.items())
    table = [[group_by, "count", *fields]]
    table += [
        [group, totals["count"], *(totals[name] for name in fields)] for group, totals in ordered
    ]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(table)
    write_atomically(out.with_suffix(".csv"), buffer.getvalue())
    report = {
        "source": str(path),
        "group_by": group_by,
        "rows": rows,
        "groups": {group: totals for group, totals in ordered},
    }
    write_atomically(out.with_suffix(".json"), json.dumps(report, indent=2))
    logger.info("report written: %d rows, %d groups -> %s.{csv,json}", rows, len(groups), out)
