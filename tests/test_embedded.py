"""The embedded Valkey server: one per home, detached, persistent, stoppable."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from brokers import build_broker, embedded, queue_depths
from jobkit.errors import EmbeddedServerError
from tests.support.processes import (
    REPO,
    child_env,
    read_lines,
    run_jobkit,
    start_dramatiq,
    stop_group,
    valkey_servers_for,
    wait_until,
)


def test_ensure_server_starts_once_and_then_reuses_it(home: Path) -> None:
    assert not embedded.is_running(embedded.EmbeddedPaths(home))
    paths = embedded.ensure_server(home)
    first = embedded.status(home)["pid"]
    embedded.ensure_server(home)
    assert embedded.status(home)["pid"] == first
    assert valkey_servers_for(home) == [first]
    assert paths.socket == home / "valkey.sock"


def test_status_reports_a_persistent_server(home: Path) -> None:
    assert embedded.status(home)["running"] is False
    embedded.ensure_server(home)
    facts = embedded.status(home)
    assert facts["running"] is True
    assert facts["aof_enabled"] is True
    assert facts["version"].startswith("9.")
    assert facts["socket"] == str(home / "valkey.sock")


def test_server_outlives_the_process_that_started_it(home: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", "import actors"],
        env=child_env(f"embedded://{home}"),
        cwd=REPO,
        check=True,
        timeout=60,
    )
    assert embedded.status(home)["running"] is True


def test_queued_jobs_survive_a_stop_and_restart(home: Path) -> None:
    broker = build_broker(f"embedded://{home}")
    import dramatiq

    @dramatiq.actor(queue_name="jobkit-test", broker=broker)
    def kept() -> None: ...

    for _ in range(5):
        kept.send()
    broker.close()
    assert embedded.stop(home) is True
    assert embedded.status(home)["running"] is False
    assert valkey_servers_for(home) == []

    restarted = build_broker(f"embedded://{home}")
    depths = {d.queue: d for d in queue_depths(restarted, {"jobkit-test"})}
    assert depths["jobkit-test"].ready == 5


def test_stop_when_nothing_runs_is_a_no_op(home: Path) -> None:
    assert embedded.stop(home) is False


def test_a_long_home_gets_a_short_socket_path(home: Path) -> None:
    deep = home / ("d" * 60) / ("e" * 60)
    paths = embedded.ensure_server(deep)
    try:
        assert len(str(paths.socket)) < 100
        assert str(paths.socket).startswith("/tmp/jobkit-")
        assert embedded.status(deep)["running"] is True
    finally:
        embedded.stop(deep)


def test_an_unusable_home_gives_one_clear_line() -> None:
    with pytest.raises(EmbeddedServerError) as caught:
        embedded.ensure_server(Path("/dev/null/jobkit"))
    assert "JOBKIT_HOME" in str(caught.value)
    assert "\n" not in str(caught.value)


#: The commands that only look: they use a running server and start none.
INSPECTING = [
    ["queues"],
    ["dead-letters", "list"],
    ["dead-letters", "show", "no-such-id"],
    ["stats", "--url", "http://127.0.0.1:1/metrics", "--interval", "1"],
]


@pytest.mark.parametrize("command", INSPECTING, ids=" ".join)
def test_an_inspecting_command_creates_no_home_and_starts_no_server(
    home: Path, command: list[str]
) -> None:
    target = home / "missing" / "x"
    result = run_jobkit(*command, env=child_env(f"embedded://{target}"))
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("jobkit: error: ") and result.stderr.count("\n") == 1
    if command[0] != "stats":  # it reads the workers' metrics, never the broker
        assert f"no embedded broker has run under {target}" in result.stderr
        assert "`jobkit embedded start`" in result.stderr
    assert not (home / "missing").exists()
    assert valkey_servers_for(target) == []


def test_after_a_stop_inspecting_commands_leave_the_server_stopped(home: Path) -> None:
    env = child_env(f"embedded://{home}")
    embedded.ensure_server(home)
    attached = run_jobkit("queues", "--json", env=env)
    assert attached.returncode == 0, attached.stderr  # a running server is used
    assert embedded.stop(home)
    for command in INSPECTING[:3]:
        result = run_jobkit(*command, env=env)
        assert result.returncode == 1
        assert result.stderr == (
            f"jobkit: error: the embedded broker under {home} is not running; start it with "
            "`jobkit embedded start` (a worker starts it too)\n"
        )
        assert valkey_servers_for(home) == []
        assert embedded.status(home)["running"] is False


def test_embedded_start_starts_the_server_an_inspecting_command_asked_for(home: Path) -> None:
    env = child_env(f"embedded://{home}")
    refused = run_jobkit("queues", env=env)
    assert refused.returncode == 1 and "`jobkit embedded start`" in refused.stderr
    started = run_jobkit("embedded", "start", env=env)
    assert started.returncode == 0, started.stderr
    assert started.stdout == f"embedded server for {home} running\n"
    assert len(valkey_servers_for(home)) == 1
    assert run_jobkit("queues", env=env).returncode == 0
    again = run_jobkit("embedded", "start", env=env)  # already running: the same server
    assert again.returncode == 0 and len(valkey_servers_for(home)) == 1
    assert embedded.stop(home)


def test_outside_attach_only_a_stopped_server_is_started_again(home: Path) -> None:
    embedded.ensure_server(home)
    embedded.stop(home)
    with embedded.attach_only(), pytest.raises(EmbeddedServerError, match="not running"):
        embedded.ensure_server(home)
    assert embedded.ensure_server(home) and embedded.status(home)["running"] is True


CONCURRENT_STARTER = """
import sys, time
start_at = float(sys.argv[1])
while time.time() < start_at:
    time.sleep(0.001)
import actors
actors.ping.send()
"""


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_starts_leave_exactly_one_server(home: Path, attempt: int) -> None:
    start_at = f"{time.time() + 2.0}"
    env = child_env(f"embedded://{home}")
    starters = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_STARTER, start_at], env=env, cwd=REPO)
        for _ in range(3)
    ]
    assert [p.wait(timeout=60) for p in starters] == [0, 0, 0]
    assert len(valkey_servers_for(home)) == 1
    broker = build_broker(f"embedded://{home}")
    assert {d.queue: d.ready for d in queue_depths(broker)}["default"] == 3


def test_app_and_two_worker_processes_starting_together_share_one_server(
    home: Path, tmp_path: Path
) -> None:
    completions = tmp_path / "completions"
    env = child_env(f"embedded://{home}", JOBKIT_TEST_COMPLETION_LOG=str(completions))
    workers = start_dramatiq(
        "actors",
        "tests.support.completion_log",
        "-p",
        "2",
        "-t",
        "2",
        "--worker-shutdown-timeout",
        "5000",
        env=env,
        log=tmp_path / "workers.log",
    )
    try:
        app = subprocess.run(
            [sys.executable, "-c", "import actors\nfor _ in range(20): actors.ping.send()"],
            env=env,
            cwd=REPO,
            timeout=60,
            check=True,
        )
        assert app.returncode == 0
        assert wait_until(
            lambda: sum(line.startswith("ping ") for line in read_lines(completions)) == 20,
            timeout=60,
        ), (tmp_path / "workers.log").read_text()[-2000:]
        assert len(valkey_servers_for(home)) == 1
    finally:
        assert stop_group(workers) == 0
