"""The `jobkit` command: help, queues, send, embedded, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Broker

from brokers import embedded, queue_depths
from jobkit.cli import build_parser
from tests.conftest import EMBEDDED_URL, env_for, url_for
from tests.support.processes import child_env, run_jobkit, wait_until, worker

COMMANDS = [
    [],
    ["demo"],
    ["worker"],
    ["queues"],
    ["stats"],
    ["send"],
    ["jobs"],
    ["jobs", "list"],
    ["jobs", "show"],
    ["jobs", "wait"],
    ["jobs", "cancel"],
    ["dead-letters"],
    ["dead-letters", "list"],
    ["dead-letters", "show"],
    ["dead-letters", "replay"],
    ["dead-letters", "purge"],
    ["bench"],
    ["embedded"],
    ["embedded", "status"],
    ["embedded", "stop"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "jobkit")
def test_every_command_has_help(command: list[str]) -> None:
    result = run_jobkit(*command, "--help", env=child_env(EMBEDDED_URL))
    assert result.returncode == 0, result.stderr
    assert "usage: jobkit" in result.stdout
    assert "\nenvironment:\n" in result.stdout


def test_help_covers_every_subcommand_registered() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert set(subparsers.choices) == {
        "demo",
        "worker",
        "queues",
        "stats",
        "send",
        "jobs",
        "dead-letters",
        "bench",
        "embedded",
    }


def test_queues_json_counts_ready_delayed_and_dead_lettered(
    real_broker: Broker, real_broker_kind: str
) -> None:
    @dramatiq.actor(queue_name="jobkit-test", broker=real_broker, max_retries=0)
    def fails() -> None:
        raise RuntimeError("boom")

    fails.send()
    with worker(real_broker, threads=1, queues={"jobkit-test"}):
        assert wait_until(
            lambda: queue_depths(real_broker, {"jobkit-test"})[-1].dead_lettered == 1, timeout=20
        )
    for _ in range(3):
        fails.send()
    for _ in range(2):
        fails.send_with_options(delay=600_000)

    env = child_env(url_for(real_broker_kind), **env_for(real_broker_kind))
    result = run_jobkit("queues", "--json", "-q", "jobkit-test", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    counts = {q["queue"]: q for q in report["queues"]}
    assert counts["jobkit-test"]["ready"] == 3
    assert counts["jobkit-test"]["delayed"] == 2
    assert counts["jobkit-test"]["dead_lettered"] == 1
    if real_broker_kind == "rabbitmq":
        assert counts["jobkit-test"]["in_flight"] is None
        assert counts["jobkit-test"]["levels"] is None
        assert "guest:***@" in report["broker"]
    else:
        assert counts["jobkit-test"]["in_flight"] == 0
        assert counts["jobkit-test"]["levels"] == {"critical": 0, "high": 0, "normal": 3, "low": 0}
    assert "default" in counts and "demo" in counts  # declared by the actors package


def test_queues_table_for_people(real_broker: Broker, real_broker_kind: str) -> None:
    result = run_jobkit("queues", env=child_env(url_for(real_broker_kind)))
    assert result.returncode == 0, result.stderr
    for column in ("ready", "critical", "low", "delayed", "dead-lettered"):
        assert column in result.stdout
    assert "default" in result.stdout


def test_send_enqueues_a_checked_job(real_broker: Broker, real_broker_kind: str) -> None:
    env = child_env(url_for(real_broker_kind))
    result = run_jobkit("send", "sleep_ms", "5", "--priority", "HIGH", "--json", env=env)
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)
    assert message["actor_name"] == "sleep_ms" and message["args"] == [5]
    assert message["options"]["priority"] == "high"
    (depth,) = [d for d in queue_depths(real_broker, {"default"}) if d.queue == "default"]
    assert depth.ready == 1
    if depth.levels is not None:
        assert depth.levels["high"] == 1


@pytest.mark.parametrize(
    ("args", "expected", "code"),
    [
        (["send", "no_such_actor"], "no actor named 'no_such_actor'; known actors: ", 1),
        (["send", "sleep_ms"], "wrong arguments for sleep_ms(ms: int)", 1),
        (["send", "sleep_ms", "1", "2"], "wrong arguments for sleep_ms", 1),
        # Options are checked as they are parsed: usage errors (tests/test_cli_input.py).
        (["send", "ping", "--kwargs", "{bad"], "--kwargs: not valid JSON", 2),
        (["send", "ping", "--kwargs", "[1]"], "--kwargs: must be a JSON object", 2),
        (["send", "ping", "--priority", "asap"], "--priority: invalid priority 'asap'", 2),
    ],
)
def test_send_rejects_bad_input_with_one_line(args: list[str], expected: str, code: int) -> None:
    result = run_jobkit(*args, env=child_env(EMBEDDED_URL))
    assert result.returncode == code
    assert result.stderr.startswith("jobkit: error: ")
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("url", "expected", "secret"),
    [
        ("ftp://user:s3cr3t-x@127.0.0.1/", "unsupported scheme", "s3cr3t-x"),
        ("redis://:s3cr3t-x@127.0.0.1:1/0", "cannot reach Redis", "s3cr3t-x"),
        ("amqp://guest:s3cr3t-x@127.0.0.1:5672/", "refused the credentials", "s3cr3t-x"),
        ("amqp://guest:guest@127.0.0.1:1/", "cannot reach RabbitMQ", None),
    ],
)
@pytest.mark.parametrize("command", [["queues"], ["send", "ping"], ["demo", "--jobs", "1"]])
def test_bad_or_dead_broker_gives_one_line_and_no_secret(
    url: str, expected: str, secret: str | None, command: list[str]
) -> None:
    result = run_jobkit(*command, env=child_env(url))
    assert result.returncode == 1
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    if secret:
        assert secret not in result.stderr + result.stdout


def test_verbose_shows_the_traceback() -> None:
    result = run_jobkit("--verbose", "queues", env=child_env("ftp://127.0.0.1/"))
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def test_embedded_status_and_stop(home: Path) -> None:
    env = child_env(f"embedded://{home}")
    result = run_jobkit("embedded", "status", "--json", env=env)
    assert result.returncode == 3
    assert json.loads(result.stdout)["running"] is False

    embedded.ensure_server(home)
    result = run_jobkit("embedded", "status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["running"] is True and facts["aof_enabled"] is True

    result = run_jobkit("embedded", "stop", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["was_running"] is True
    assert embedded.status(home)["running"] is False


def test_embedded_commands_refuse_a_non_embedded_broker() -> None:
    result = run_jobkit("embedded", "status", env=child_env("redis://127.0.0.1:6379/15"))
    assert result.returncode == 1
    assert "not the embedded server" in result.stderr


def test_version_is_the_installed_distribution_s() -> None:
    import importlib.metadata

    result = run_jobkit("--version", env=child_env(EMBEDDED_URL))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"jobkit {importlib.metadata.version('jobkit')}"


def test_every_public_exception_is_a_jobkit_error() -> None:
    """One error tree: the CLI shows any of them as its one line, exit code 1."""
    import brokers
    from brokers.bulk import BulkSendError
    from brokers.dead_letter_store import DeadLetterError
    from brokers.decoding import OversizedMessage, UndecodableMessage
    from jobkit import errors
    from middleware.priorities import InvalidPriority
    from middleware.rate_limits import RateLimitConfigError
    from middleware.signing import BadSignature

    public = [
        brokers.BrokerUnavailable, brokers.BrokerBlocked, brokers.BrokerFull,
        brokers.BrokerConfigError, brokers.EmbeddedServerError, BulkSendError,
        DeadLetterError, UndecodableMessage, OversizedMessage, BadSignature,
        InvalidPriority, RateLimitConfigError,
    ]  # fmt: skip
    assert [e for e in public if not issubclass(e, errors.JobkitError)] == []
