"""The benchmark suite runs end to end (a tiny configuration); it asserts no speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO

SCENARIOS = "enqueue,drain,latency_bound,e2e_latency,priority,peers,records,records-scale"


def run_suite(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_tiny_run_covers_every_scenario_and_writes_json_and_a_plot(tmp_path: Path) -> None:
    report_path, plot_path = tmp_path / "report.json", tmp_path / "plot.png"
    result = run_suite(
        "--brokers", "redis", "--messages", "200", "--repeat", "1", "--quick", "--records", "500",
        "--scenarios", SCENARIOS, "--json", str(report_path), "--plot", str(plot_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    redis = report["brokers"]["redis"]
    assert set(redis) == {name.replace("-", "_") for name in SCENARIOS.split(",")} - {"peers"}
    assert all(samples[0] > 0 for samples in redis["enqueue"].values())
    assert {"jobkit send", "jobkit send_many", "dramatiq send"} <= set(redis["enqueue"])
    assert set(redis["drain"]) == {"1x8", "2x8"}  # --quick leaves out 1 x 1
    for shape in ("1x8", "2x8"):
        pair = redis["drain"][shape]
        assert pair["jobkit"][0] > 0 and pair["dramatiq"][0] > 0 and len(pair["ratios"]) == 1
    assert redis["latency_bound"]["ratios"][0] > 0
    assert len(redis["e2e_latency"]["jobkit"]["samples_ms"]) == 100  # 1 s at 100/s
    assert redis["priority"]["jobkit"]["p95"] > 0
    # Job records on vs off, and at scale (500 records here).
    assert set(redis["records"]) == {"drain 1x8", "send", "send_many"}
    for pair in redis["records"].values():
        assert pair["on"][0] > 0 and pair["off"][0] > 0 and len(pair["ratios"]) == 1
    scale = redis["records_scale"]
    assert scale["records"] == 500 and scale["memory"]["bytes_per_record"] > 0
    assert scale["queries"]["list, no filter, 100"]["found"] == 100
    assert scale["queries"]["show (random id)"]["median_ms"] > 0
    assert report["peers"]["celery"]["redis"][0] > 0 and report["peers"]["rq"]["redis"][0] > 0
    assert report["machine"]["servers"]["redis"].startswith(("Redis", "Valkey"))
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The tables, with the targets' ratios, go to stdout.
    assert "targets (ratios from this run)" in result.stdout
    assert "send_many / jobkit confirmed send" in result.stdout
    assert "records on/off, drain 1x8" in result.stdout


def test_an_unreachable_broker_is_skipped_with_one_line() -> None:
    result = run_suite(
        "--brokers", "rabbitmq", "--scenarios", "enqueue", "--quick",
        env={"JOBKIT_BENCH_RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/"},
    )  # fmt: skip
    assert result.returncode == 1
    skipped = [line for line in result.stderr.splitlines() if "skipping rabbitmq" in line]
    assert (
        len(skipped) == 1 and "cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/" in skipped[0]
    )
    assert "no broker could be measured" in result.stderr
