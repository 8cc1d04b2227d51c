"""Reports: streamed aggregation, atomic outputs, retried while the source is missing."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Broker

from actors.reports import ReportInputError, aggregate, build_report
from brokers.dead_letter_store import dead_letter_store
from tests.support.processes import wait_until, worker
from tests.support.shipped import redeclare

QUEUE = "jobkit-test"
CSV = "country,amount\nFR,10\nDE,2.5\nFR,5\n"


def test_money_adds_up_exactly(tmp_path: Path) -> None:
    source = tmp_path / "cents.csv"
    source.write_text("country,amount\n" + "FR,0.1\n" * 3 + "DE,0.2\nDE,0.1\n")
    groups, _ = aggregate(source, "country", ["amount"])
    assert groups["FR"]["amount"] == 0.3 and groups["DE"]["amount"] == 0.3


def test_a_csv_is_totalled_and_counted_by_group(tmp_path: Path) -> None:
    source = tmp_path / "orders.csv"
    source.write_text(CSV)
    groups, rows = aggregate(source, "country", ["amount"])
    assert rows == 3
    assert groups == {"FR": {"count": 2, "amount": 15.0}, "DE": {"count": 1, "amount": 2.5}}


def test_json_lines_work_the_same(tmp_path: Path) -> None:
    source = tmp_path / "orders.jsonl"
    source.write_text('{"country": "FR", "amount": 1}\n\n{"country": "FR", "amount": 2}\n')
    assert aggregate(source, "country", ["amount"]) == ({"FR": {"count": 2, "amount": 3.0}}, 2)


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("bad.jsonl", '{"country": "FR", "amount": 1}\nnot json\n', "bad.jsonl:2: not JSON"),
        ("bad.csv", "country,amount\nFR,ten\n", "bad.csv:2: amount='ten' is not a number"),
        ("bad2.csv", "region,amount\nEU,1\n", "bad2.csv:2: no 'country' column"),
        ("bad.txt", "x", "not a .csv or .jsonl file"),
    ],
)
def test_a_malformed_source_says_where(tmp_path: Path, name: str, text: str, error: str) -> None:
    source = tmp_path / name
    source.write_text(text)
    with pytest.raises(ReportInputError, match=error):
        aggregate(source, "country", ["amount"])


def test_memory_stays_flat_on_a_large_source(tmp_path: Path) -> None:
    source = tmp_path / "big.csv"
    with source.open("w") as out:
        out.write("country,amount\n")
        for n in range(200_000):
            out.write(f"C{n % 50},{n % 7}\n")
    tracemalloc.start()
    try:
        groups, rows = aggregate(source, "country", ["amount"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == 200_000 and len(groups) == 50
    assert peak < 2_000_000  # bytes: rows are never held together


def declare(broker: Broker) -> dramatiq.Actor:
    return redeclare(build_report, broker, min_backoff=50, max_backoff=200)


def test_the_job_writes_csv_and_json_and_waits_for_a_late_source(
    system_broker: Broker, tmp_path: Path
) -> None:
    actor = declare(system_broker)
    source, output = tmp_path / "late.csv", tmp_path / "out" / "by-country"
    actor.send(str(source), str(output), "country", ["amount"])
    with worker(system_broker, threads=1, queues={QUEUE}):
        time.sleep(0.3)  # the first attempt finds no file and is retried
        assert not output.with_suffix(".json").exists()
        source.write_text(CSV)
        assert wait_until(lambda: output.with_suffix(".json").exists(), 20)
    report = json.loads(output.with_suffix(".json").read_text())
    assert report["rows"] == 3 and report["groups"]["FR"] == {"count": 2, "amount": 15.0}
    assert output.with_suffix(".csv").read_text().splitlines() == [
        "country,count,amount",
        "DE,1,2.5",
        "FR,2,15",
    ]
    assert dead_letter_store(system_broker).count() == 0


def test_a_malformed_source_is_dead_lettered_at_once(system_broker: Broker, tmp_path: Path) -> None:
    actor = declare(system_broker)
    source = tmp_path / "bad.csv"
    source.write_text("country,amount\nFR,ten\n")
    message = actor.send(str(source), str(tmp_path / "out"), "country", ["amount"])
    store = dead_letter_store(system_broker)
    with worker(system_broker, threads=1, queues={QUEUE}):
        assert wait_until(lambda: store.count() == 1, 20)
    record = store.get(message.message_id)
    assert record["reason"] == "non_retryable" and record["attempts"] == 1
    assert "bad.csv:2: amount='ten' is not a number" in record["exc_message"]
