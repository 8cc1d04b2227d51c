"""`jobkit demo` on a broker it shares: with an earlier, interrupted run, with other workers,
with the app's own queued jobs. Each run has queues of its own and counts only its jobs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
from dramatiq import Broker

import actors
from brokers import embedded
from tests.conftest import env_for, url_for
from tests.support.processes import (
    REPO,
    child_env,
    jobkit_command,
    read_lines,
    run_jobkit,
    start_dramatiq,
    stop_group,
    wait_until,
)
from tests.test_demo import dramatiq_processes

#: What one run sends, per actor, with ``--jobs 200``.
PLANNED = {
    "build_report": 1,
    "daily_summary": 1,
    "deliver_email": 11,
    "deliver_webhook": 5,
    "demo_job": 200,
    "make_thumbnail": 7,
    "resize_image": 2,
    "scrape_page": 9,
    "snapshot_queue_depths": 1,
}
MEANT_TO_FAIL = {"deliver_webhook": 1, "make_thumbnail": 1, "scrape_page": 1}
#: What a run sends before this line; an interrupt after it has jobs to leave behind.
SENT_LINE = "jobkit demo: sent "


def home_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with ``JOBKIT_HOME=home`` and no broker URL (embedded)."""
    env = dict(os.environ)
    env.pop("JOBKIT_BROKER_URL", None)
    env.update(JOBKIT_HOME=str(home), PYTHONPATH=str(REPO), **extra)
    return env


def demo(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*jobkit_command(), "demo", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


def assert_exactly_the_planned_jobs(summary: dict[str, Any]) -> None:
    """Every count of the summary, and every output on disk, is one run's: no more, no less."""
    assert summary["surprises"] == []
    actors = summary["actors"]
    assert {name: counts["sent"] for name, counts in actors.items()} == PLANNED
    for name, counts in actors.items():
        failing = MEANT_TO_FAIL.get(name, 0)
        assert (counts["processed"], counts["dead_lettered"]) == (PLANNED[name] - failing, failing)
    output = Path(summary["output_dir"])
    assert len(list((output / "outbox").glob("*.eml"))) == 11
    assert len((output / "load" / "done").read_text().split()) == 200
    assert len((output / "webhooks-received.jsonl").read_text().splitlines()) == 4
    assert len(list((output / "thumbs").glob("*.webp"))) == 6
    assert len(list((output / "cards").glob("*.jpg"))) == 2
    assert len(list((output / "scraped").glob("*.json"))) == 8


def queue_names(env: dict[str, str], cwd: Path) -> set[str]:
    # The demo stopped the server it started; listing never starts one.
    started = subprocess.run(
        [*jobkit_command(), "embedded", "start"], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    listed = subprocess.run(
        [*jobkit_command(), "queues", "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    return {queue["queue"] for queue in json.loads(listed.stdout)["queues"]}


def test_a_demo_interrupted_after_sending_leaves_nothing_that_changes_the_next_run(
    home: Path, tmp_path: Path
) -> None:
    env = home_env(home)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "first.out"
    # A slow first run: most of its 3,000 small jobs are still queued when it is stopped.
    first = subprocess.Popen(
        [*jobkit_command(), "demo", "--jobs", "3000", "--work-ms", "100", "-p", "1", "-t", "2"],
        env=env,
        cwd=cwd,
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )
    try:
        assert wait_until(lambda: SENT_LINE in out.read_text(errors="replace"), timeout=90), (
            out.read_text(errors="replace")[-3000:]
        )
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=60) == 130, out.read_text(errors="replace")[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        for pid in dramatiq_processes(str(home)):
            os.kill(pid, signal.SIGKILL)
    assert dramatiq_processes(str(home)) == []
    # Its queues went with it (those of the app's actors are declared by `queues` itself).
    assert not {name for name in queue_names(env, cwd) if name.startswith("jobkit-demo-")}
    embedded.stop(home)

    second = demo("--jobs", "200", "--json", env=env, cwd=cwd)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_exactly_the_planned_jobs(json.loads(second.stdout))


def test_the_demo_keeps_its_files_under_jobkit_home(home: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = demo("--jobs", "5", "--json", env=home_env(home), cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["output_dir"] == str((home / "demo").resolve())
    assert (home / "demo" / "outbox").is_dir() and (home / "demo" / "workers.log").is_file()
    assert list(cwd.iterdir()) == []


def test_another_worker_on_the_broker_takes_none_of_the_demo_s_jobs(
    home: Path, tmp_path: Path
) -> None:
    url = f"embedded://{home}"
    embedded.ensure_server(home)
    elsewhere = tmp_path / "other-worker"
    other_log = tmp_path / "other-worker.log"
    # The app's own worker on the same broker: every queue its actors declare.
    other = start_dramatiq(
        "actors", "-p", "1", "-t", "4",
        env=child_env(
            url,
            JOBKIT_LOG_FORMAT="json",
            JOBKIT_EMAIL_OUTBOX=str(elsewhere / "outbox"),
            JOBKIT_SCRAPE_DIR=str(elsewhere / "scraped"),
            JOBKIT_REPORT_DIR=str(elsewhere / "reports"),
        ),
        log=other_log,
    )  # fmt: skip
    try:
        assert wait_until(
            lambda: any("ready for action" in line for line in read_lines(other_log)), timeout=60
        ), "\n".join(read_lines(other_log)[-30:])
        result = run_jobkit(
            "demo", "--jobs", "200", "--json", "--timeout", "60", "--output",
            str(tmp_path / "demo"), env=child_env(url), timeout=240,
        )  # fmt: skip
    finally:
        stop_group(other)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_exactly_the_planned_jobs(json.loads(result.stdout))
    ran_there = [line for line in read_lines(other_log) if '"event": "job.' in line]
    assert ran_there == []
    assert not elsewhere.exists()


def test_the_demo_s_workers_leave_the_app_s_queued_jobs_alone(home: Path, tmp_path: Path) -> None:
    url = f"embedded://{home}"
    embedded.ensure_server(home)
    sent = run_jobkit("send", "sleep_ms", "1", env=child_env(url))
    assert sent.returncode == 0, sent.stderr
    result = run_jobkit(
        "demo", "--jobs", "10", "--output", str(tmp_path / "demo"), env=child_env(url),
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    listed = run_jobkit("queues", "--json", env=child_env(url))
    depths = {queue["queue"]: queue for queue in json.loads(listed.stdout)["queues"]}
    assert depths["default"]["ready"] == 1  # the app's job waits for the app's workers


def rabbitmq_has_queue(url: str, name: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404, error
        return False
    finally:
        if connection.is_open:
            connection.close()
    return True


def test_the_demo_deletes_its_queues_and_files_its_dead_letters_under_the_actors_queues(
    real_broker_kind: str, real_broker: Broker, tmp_path: Path
) -> None:
    url = url_for(real_broker_kind)
    env = child_env(url, **env_for(real_broker_kind))
    result = run_jobkit(
        "demo", "--jobs", "20", "--json", "--output", str(tmp_path / "demo"), env=env,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert re.fullmatch(r"jobkit-demo-[0-9a-f]+\.\*", summary["queues"])
    sent = summary["totals"]["sent"]
    assert f"sent {sent} jobs to this run's queues {summary['queues']}" in result.stderr
    run = summary["queues"].removesuffix(".*")
    if real_broker_kind == "rabbitmq":
        queues = {actor.queue_name for actor in actors.broker.actors.values()}
        left = [
            name
            for queue in sorted(queues)
            for name in (f"{run}.{queue}", f"{run}.{queue}.DQ", f"{run}.{queue}.XQ")
            if rabbitmq_has_queue(url, name)
        ]
    else:
        left = [key.decode() for key in real_broker.client.scan_iter(match=f"*{run}*")]
    assert left == []
    listed = run_jobkit("dead-letters", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    dead = json.loads(listed.stdout)
    assert sorted((d["actor"], d["queue"], d["message"]["queue_name"]) for d in dead) == [
        ("deliver_webhook", "webhooks", "webhooks"),
        ("make_thumbnail", "images", "images"),
        ("scrape_page", "scraping", "scraping"),
    ]
