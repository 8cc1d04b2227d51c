"""`jobkit demo` end to end on a fresh embedded broker, including shutdown on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from brokers import embedded
from tests.conftest import env_for, url_for
from tests.support.processes import (
    REPO,
    child_env,
    jobkit_command,
    pids_with_env,
    run_jobkit,
    valkey_servers_for,
    wait_until,
)


def dramatiq_processes(marker: str) -> list[int]:
    """Live processes running the dramatiq CLI with ``marker`` in their environment."""
    found = []
    for pid in pids_with_env(marker):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"dramatiq" in cmdline:
            found.append(pid)
    return found


ACTORS = {
    "build_report",
    "daily_summary",
    "deliver_email",
    "deliver_webhook",
    "demo_job",
    "make_thumbnail",
    "resize_image",
    "scrape_page",
    "snapshot_queue_depths",
}


def run_demo(url: str, output: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_jobkit(
        "demo", "--output", str(output), *args, env=child_env(url, **env), timeout=240
    )


def test_the_demo_runs_every_job_with_retries_deferrals_and_dead_letters(
    home: Path, tmp_path: Path
) -> None:
    url = f"embedded://{home}"
    output = tmp_path / "demo"
    result = run_demo(url, output, "--jobs", "200", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    actors = summary["actors"]
    assert set(actors) == ACTORS
    for name, counts in actors.items():
        assert counts["processed"] >= 1, name
        assert counts["processed"] + counts["dead_lettered"] == counts["sent"], name
        assert counts["dead_lettered"] == counts["meant_to_fail"], name
    assert actors["demo_job"]["sent"] == 200
    totals = summary["totals"]
    assert totals["retried"] >= 1 and totals["deferred"] >= 1 and totals["dead_lettered"] >= 3
    assert summary["surprises"] == []
    # Every output is on disk.
    assert len(list((output / "thumbs").glob("*.webp"))) == actors["make_thumbnail"]["processed"]
    assert len(list((output / "cards").glob("*.jpg"))) == 2
    assert len(list((output / "outbox").glob("*.eml"))) == actors["deliver_email"]["sent"]
    assert len(list((output / "scraped").glob("*.json"))) == actors["scrape_page"]["processed"]
    assert {p.name for p in (output / "reports").iterdir()} >= {
        "orders-by-country.csv",
        "orders-by-country.json",
    }
    assert len((output / "webhooks-received.jsonl").read_text().splitlines()) == 4
    assert len((output / "load" / "done").read_text().split()) == 200
    # Nothing left running: workers stopped, and the server the demo started.
    assert dramatiq_processes(url) == []
    assert valkey_servers_for(home) == []


def test_the_demo_runs_on_rabbitmq(tmp_path: Path) -> None:
    kind = "rabbitmq"  # needs JOBKIT_STATE_URL: emails and pages are rate-limited
    result = run_demo(url_for(kind), tmp_path / "demo", "--jobs", "50", "--json", **env_for(kind))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert set(summary["actors"]) == ACTORS and summary["surprises"] == []


def test_demo_keeps_a_server_it_did_not_start_and_prints_a_table(
    home: Path, tmp_path: Path
) -> None:
    embedded.ensure_server(home)
    result = run_demo(f"embedded://{home}", tmp_path / "demo", "--jobs", "10")
    assert result.returncode == 0, result.stderr[-3000:]
    assert embedded.status(home)["running"] is True
    for text in ("processed", "retried", "deferred", "dead letters", "outbox"):
        assert text in result.stdout
    assert re.search(r"^dead-lettered on purpose: (\d+) of \1 \(", result.stdout, re.M), (
        result.stdout
    )
    for actor in ACTORS:
        assert actor in result.stdout


def test_the_demo_does_not_clear_a_directory_it_did_not_make(home: Path, tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = run_demo(f"embedded://{home}", tmp_path, "--jobs", "1")
    assert result.returncode == 1
    assert "was not made by jobkit demo; choose another --output" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def where_it_hangs(process: subprocess.Popen[bytes], tmp_path: Path) -> str:
    """The threads of a process that did not stop (py-spy), and the end of its output."""
    spy = Path(sys.executable).parent / "py-spy"
    dump = subprocess.run(
        [str(spy), "dump", "--pid", str(process.pid)], capture_output=True, text=True, timeout=30
    )
    output = (tmp_path / "demo.out").read_text(errors="replace")[-3000:]
    return f"{dump.stdout}{dump.stderr}\n--- its output:\n{output}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_demo_stops_its_workers_on_sigterm_and_ctrl_c(
    home: Path, tmp_path: Path, signum: int
) -> None:
    url = f"embedded://{home}"
    demo = subprocess.Popen(
        [
            *jobkit_command(),
            "demo",
            "--jobs",
            "5000",
            "--work-ms",
            "200",
            "-p",
            "1",
            "-t",
            "2",
            "--output",
            str(tmp_path / "demo"),
        ],
        env=child_env(url),
        cwd=REPO,
        # Files, not pipes: nobody reads them while it runs, and a full pipe would block it.
        stdout=(tmp_path / "demo.out").open("wb"),
        stderr=subprocess.STDOUT,
        # As from a terminal: a suite started in the background (`make test &`, nohup)
        # ignores SIGINT, and the demo would inherit that and rightly ignore Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert wait_until(lambda: len(dramatiq_processes(url)) >= 2, timeout=60)
        demo.send_signal(signum)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not stop within 60 s\n{where_it_hangs(demo, tmp_path)}")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
            for pid in dramatiq_processes(url):  # its workers, in a session of their own
                os.kill(pid, signal.SIGKILL)
    assert demo.returncode == (143 if signum == signal.SIGTERM else 130)
    assert dramatiq_processes(url) == []
    assert valkey_servers_for(home) == []
