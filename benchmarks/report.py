"""The suite's report: rich tables, the target ratios, and a matplotlib plot."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """``median (min-max)`` of ``values``."""
    if not values:
        return "-"
    middle = fmt.format(statistics.median(values))
    if len(values) == 1:
        return middle
    return f"{middle} ({fmt.format(min(values))}-{fmt.format(max(values))})"


Section = tuple[str, tuple[str, ...], list[tuple[str, ...]]]


def sections(report: dict[str, Any]) -> list[Section]:
    """(title, columns, rows) for each scenario that ran, plus the targets."""
    brokers = report["brokers"]
    out: list[Section] = []
    rows: list[tuple[str, ...]] = [
        (name, method, spread(samples))
        for name, result in brokers.items()
        for method, samples in result.get("enqueue", {}).items()
    ]
    out.append(("enqueue, messages/s", ("broker", "method", "msg/s"), rows))

    rows = []
    for name, result in brokers.items():
        for shape, pair in result.get("drain", {}).items():
            rows.append(
                (
                    name,
                    shape,
                    spread(pair["jobkit"]),
                    spread(pair["dramatiq"]),
                    spread(pair["ratios"], "{:.2f}"),
                )
            )
        bound = result.get("latency_bound")
        if bound:
            rows.append(
                (
                    name,
                    "1x8, 10 ms jobs",
                    spread(bound["jobkit"]),
                    spread(bound["dramatiq"]),
                    spread(bound["ratios"], "{:.2f}"),
                )
            )
    out.append(
        (
            "drain, jobs/s: jobkit full stack vs plain Dramatiq",
            ("broker", "workers", "jobkit", "dramatiq", "jobkit/dramatiq"),
            rows,
        )
    )

    rows = []
    for name, result in brokers.items():
        for system, values in result.get("e2e_latency", {}).items():
            rows.append(
                (
                    name,
                    f"send to finish at {values['offered_per_s']:.0f}/s",
                    system,
                    *(f"{values[f'p{p}']:.1f}" for p in (50, 95, 99)),
                )
            )
        for system, values in result.get("priority", {}).items():
            rows.append(
                (
                    name,
                    "urgent job's wait behind a backlog",
                    system,
                    f"{values['p50']:.1f}",
                    f"{values['p95']:.1f}",
                    "",
                )
            )
    out.append(("latencies, ms", ("broker", "measure", "system", "p50", "p95", "p99"), rows))

    rows = []
    for peer, results in report.get("peers", {}).items():
        if "skipped" in results:
            rows.append((peer, "-", results["skipped"]))
            continue
        for name, samples in results.items():
            rows.append((peer, name, spread(samples)))
    for name, result in brokers.items():
        if "1x8" in result.get("drain", {}):
            rows.append(("jobkit (full stack)", name, spread(result["drain"]["1x8"]["jobkit"])))
    out.append(("peers, no-op jobs/s drained (8 threads)", ("system", "broker", "jobs/s"), rows))

    out += record_sections(brokers)

    out.append(
        (
            "targets (ratios from this run)",
            ("target", "broker", "measured", "goal"),
            list(target_rows(report)),
        )
    )
    return [section for section in out if section[2]]


def record_sections(brokers: dict[str, Any]) -> list[Section]:
    """Job records: on vs off, and the store at scale (list, show, resolve, memory)."""
    rows: list[tuple[str, ...]] = []
    for name, result in brokers.items():
        for measure, pair in result.get("records", {}).items():
            unit = "jobs/s" if measure.startswith("drain") else "msg/s"
            rows.append(
                (
                    name,
                    f"{measure} ({unit})",
                    spread(pair["on"]),
                    spread(pair["off"]),
                    spread(pair["ratios"], "{:.2f}"),
                )
            )
    out: list[Section] = [
        ("job records on vs off", ("broker", "measure", "on", "off", "on/off"), rows)
    ]
    rows = []
    memory_rows: list[tuple[str, ...]] = []
    for name, result in brokers.items():
        scale = result.get("records_scale")
        if not scale or "skipped" in scale:
            continue
        count = f"{scale['records']:,}"
        for query, timing in scale["queries"].items():
            found = str(timing.get("found", ""))
            rows.append(
                (name, query, f"{timing['median_ms']:.1f}", f"{timing['max_ms']:.1f}", found)
            )
        memory = scale["memory"]
        written = f"{scale['write_s']:.0f} s, {scale['events_per_s']:,} events/s"
        memory_rows += [
            (name, f"written ({count} records)", written),
            (name, "used_memory delta / records", f"{memory['bytes_per_record']} B"),
            *(
                (name, f"MEMORY USAGE: {what}", f"{memory[key]} B")
                for what, key in (
                    ("record + its index entries", "memory_usage_per_record"),
                    ("one succeeded record", "memory_usage_succeeded_record"),
                    ("one failed record", "memory_usage_failed_record"),
                    ("index entries per record", "index_bytes_per_record"),
                )
            ),
            (name, "index keys", str(memory["index_keys"])),
            (name, "record encoding", memory["record_encoding"]),
        ]
    out.append(
        (
            "job records at scale, ms (finished records in the state Redis)",
            ("broker", "query", "median", "max", "found"),
            rows,
        )
    )
    out.append(("job records at scale, memory", ("broker", "measure", "value"), memory_rows))
    return out


def record_target_rows(brokers: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Job records' targets: on/off ratios >= 0.9; list and show < 50 ms; <= 1 KB a record."""
    rows = []
    for name, result in brokers.items():
        for measure, pair in result.get("records", {}).items():
            rows.append(
                (f"records on/off, {measure}", name, spread(pair["ratios"], "{:.2f}"), ">= 0.9")
            )
        scale = result.get("records_scale")
        if not scale or "skipped" in scale:
            continue
        queries = scale["queries"]
        lists = [t["median_ms"] for q, t in queries.items() if q.startswith("list")]
        slowest = max(lists)
        rows.append(
            (f"records list at {scale['records']:,} (slowest median)", name, f"{slowest:.1f} ms",
             "< 50 ms"),
        )  # fmt: skip
        show = queries["show (random id)"]["median_ms"]
        rows.append((f"records show at {scale['records']:,}", name, f"{show:.1f} ms", "< 50 ms"))
        memory = scale["memory"]
        rows.append(
            (
                "memory per finished record (used_memory delta)",
                name,
                f"{memory['bytes_per_record']} B",
                "<= 1024 B",
            )
        )
    return rows


def tables(report: dict[str, Any]) -> list[Table]:
    out = []
    for title, columns, rows in sections(report):
        table = Table(title=title, title_justify="left")
        for index, column in enumerate(columns):
            table.add_column(column, justify="left" if index < 2 else "right")
        for row in rows:
            table.add_row(*row)
        out.append(table)
    return out


def markdown(report: dict[str, Any]) -> str:
    """The same tables as Markdown (for docs/benchmarks.md)."""
    parts = []
    for title, columns, rows in sections(report):
        lines = [f"**{title}**", "", "| " + " | ".join(columns) + " |"]
        lines.append("|" + "|".join("---" for _ in columns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _median_of(values: list[float] | None) -> float:
    return statistics.median(values) if values else math.nan


def target_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The issue's targets, as measured: (what, broker, ratio, goal)."""
    brokers = report["brokers"]
    rows = []
    for name in ("redis", "rabbitmq"):
        pair = brokers.get(name, {}).get("drain", {}).get("1x8")
        if pair:
            rows.append(
                (
                    "full stack drain / plain Dramatiq (1x8)",
                    name,
                    spread(pair["ratios"], "{:.2f}"),
                    ">= 0.9",
                )
            )
    for name, goal in (("redis", 2.5), ("rabbitmq", 1.3)):
        jobkit = brokers.get(name, {}).get("drain", {}).get("1x8", {}).get("jobkit")
        celery = report.get("peers", {}).get("celery", {}).get(name)
        if jobkit and isinstance(celery, list) and celery:
            ratio = _median_of(jobkit) / _median_of(celery)
            rows.append(("jobkit drain / Celery threads", name, f"{ratio:.2f}", f">= {goal}"))
    for name, goal in (("rabbitmq", 10), ("redis", 5)):
        enqueue = brokers.get(name, {}).get("enqueue", {})
        bulk, single = enqueue.get("jobkit send_many"), enqueue.get("jobkit send")
        if bulk and single:
            rows.append(
                (
                    "send_many / jobkit confirmed send",
                    name,
                    f"{_median_of(bulk) / _median_of(single):.1f}",
                    f">= {goal}",
                )
            )
        plain_confirmed = enqueue.get("dramatiq send (confirm_delivery)")
        if bulk and plain_confirmed:
            rows.append(
                (
                    "send_many / Dramatiq confirmed send",
                    name,
                    f"{_median_of(bulk) / _median_of(plain_confirmed):.1f}",
                    f">= {goal}",
                )
            )
    embedded = brokers.get("embedded", {}).get("drain", {}).get("1x8", {}).get("jobkit")
    redis = brokers.get("redis", {}).get("drain", {}).get("1x8", {}).get("jobkit")
    if embedded and redis:
        rows.append(
            (
                "embedded drain / system Redis (jobkit 1x8)",
                "embedded",
                f"{_median_of(embedded) / _median_of(redis):.2f}",
                ">= 0.8",
            )
        )
    rows += record_target_rows(brokers)
    return rows


def print_report(report: dict[str, Any], console: Console) -> None:
    for table in tables(report):
        console.print(table)


def plot(report: dict[str, Any], path: Path) -> None:
    """Grouped bars per scenario x broker, medians with min-max error bars, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(report)
    if not panels:
        panels = [("nothing measured", [], {})]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False)
    for axis, (title, groups, series) in zip(axes.flat, panels, strict=False):
        width = 0.8 / max(len(series), 1)
        for index, (label, values) in enumerate(series.items()):
            xs = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
            medians = [_median_of(v) if v else 0 for v in values]
            lower = [m - min(v) if v else 0 for m, v in zip(medians, values, strict=True)]
            upper = [max(v) - m if v else 0 for m, v in zip(medians, values, strict=True)]
            axis.bar(xs, medians, width, yerr=[lower, upper], capsize=3, label=label)
        axis.set_title(title, fontsize=10)
        axis.set_xticks(range(len(groups)), groups, fontsize=8)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    machine = report.get("machine", {})
    figure.suptitle(
        f"jobkit benchmarks: {machine.get('cpus', '?')} cores, {machine.get('cpu_model', '')}",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _panels(report: dict[str, Any]) -> list[tuple[str, list[str], dict[str, list[list[float]]]]]:
    """(title, x groups, {series label: samples per group}) for each plot panel."""
    brokers = report["brokers"]
    names = list(brokers)
    panels = []

    def series_over(path: Callable, labels: list[str]) -> dict[str, list[list[float]]]:
        return {label: [path(brokers[n], label) or [] for n in names] for label in labels}

    methods = sorted({m for r in brokers.values() for m in r.get("enqueue", {})})
    if methods:
        panels.append(
            (
                "enqueue (msg/s)",
                names,
                series_over(lambda r, m: r.get("enqueue", {}).get(m), methods),
            )
        )
    shapes = sorted({s for r in brokers.values() for s in r.get("drain", {})})
    for shape in shapes:
        panels.append(
            (
                f"no-op drain {shape} (jobs/s)",
                names,
                series_over(
                    lambda r, system, shape=shape: r.get("drain", {}).get(shape, {}).get(system),
                    ["jobkit", "dramatiq"],
                ),
            )
        )
    if any("latency_bound" in r for r in brokers.values()):
        panels.append(
            (
                "10 ms jobs 1x8 (jobs/s)",
                names,
                series_over(lambda r, s: r.get("latency_bound", {}).get(s), ["jobkit", "dramatiq"]),
            )
        )
    for key, title in (
        ("e2e_latency", "send to finish p95 (ms)"),
        ("priority", "urgent wait p95 (ms)"),
    ):
        if any(key in r for r in brokers.values()):
            panels.append(
                (
                    title,
                    names,
                    series_over(
                        lambda r, s, key=key: [r[key][s]["p95"]] if s in r.get(key, {}) else None,
                        ["jobkit", "dramatiq"],
                    ),
                )
            )
    peer_series: dict[str, list[list[float]]] = {}
    for peer, results in report.get("peers", {}).items():
        if "skipped" not in results:
            peer_series[peer] = [results.get(n) or [] for n in names]
    if peer_series:
        peer_series["jobkit"] = [
            brokers[n].get("drain", {}).get("1x8", {}).get("jobkit") or [] for n in names
        ]
        panels.append(("peers: no-op drain, 8 threads (jobs/s)", names, peer_series))
    return panels
