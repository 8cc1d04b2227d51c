"""`jobkit demo` end to end on a fresh embedded broker, including shutdown on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from brokers import embedded
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


def test_demo_processes_every_job_and_leaves_nothing_running(home: Path) -> None:
    url = f"embedded://{home}"
    result = run_jobkit("demo", "--jobs", "200", "--json", env=child_env(url), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["sent"] == 200
    assert summary["processed"] == 200
    assert summary["failed"] == 0
    assert summary["jobs_per_s"] > 0
    assert dramatiq_processes(url) == []
    # The demo started the embedded server, so it stopped it too.
    assert valkey_servers_for(home) == []


def test_demo_keeps_a_server_it_did_not_start(home: Path) -> None:
    embedded.ensure_server(home)
    result = run_jobkit(
        "demo", "--jobs", "20", "--json", env=child_env(f"embedded://{home}"), timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert embedded.status(home)["running"] is True


def test_demo_table_output(home: Path) -> None:
    result = run_jobkit("demo", "--jobs", "10", env=child_env(f"embedded://{home}"), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("sent", "processed", "failed", "elapsed_s", "jobs_per_s"):
        assert row in result.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_demo_stops_its_workers_on_sigterm_and_ctrl_c(home: Path, signum: int) -> None:
    url = f"embedded://{home}"
    demo = subprocess.Popen(
        [*jobkit_command(), "demo", "--jobs", "5000", "--work-ms", "200", "-p", "1", "-t", "2"],
        env=child_env(url),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_until(lambda: len(dramatiq_processes(url)) >= 2, timeout=60)
        demo.send_signal(signum)
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == (143 if signum == signal.SIGTERM else 130)
    assert dramatiq_processes(url) == []
    assert valkey_servers_for(home) == []
