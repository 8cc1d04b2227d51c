"""The fronts load the user's app by import string: ``jobkit --app shop.jobs ...``.

A module outside ``actors/`` declares its own job on a jobkit broker; ``send``,
``queues``, ``worker`` and ``dead-letters`` work on it as on the shipped jobs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dramatiq import Broker

from brokers.processes import start_process_group
from tests.support.processes import child_env, jobkit_command, run_jobkit, stop_group, wait_until

SHOP_JOBS = '''\
"""A user's own jobs, outside jobkit's actors package."""

import dramatiq

from brokers import build_broker

broker = build_broker()
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="jobkit-test", max_retries=0)
def charge(order_id: int) -> None:
    raise ValueError(f"card declined for order {order_id}")
'''


def shop_env(tmp_path: Path, url: str, extra: dict[str, str]) -> dict[str, str]:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "jobs.py").write_text(SHOP_JOBS)
    env = child_env(url, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    return env


def test_a_user_module_is_sent_listed_run_and_replayed_through_app(
    system_broker: Broker, system_broker_kind: str, tmp_path: Path
) -> None:
    from tests.conftest import env_for, url_for

    env = shop_env(tmp_path, url_for(system_broker_kind), env_for(system_broker_kind))

    def jobkit(*args: str) -> dict | list:  # type: ignore[type-arg]
        result = run_jobkit("--app", "shop.jobs", *args, env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    sent = jobkit("send", "charge", "7", "--json")
    assert sent["actor_name"] == "charge" and sent["args"] == [7]
    queues = jobkit("queues", "--json")
    (depth,) = (q for q in queues["queues"] if q["queue"] == "jobkit-test")  # type: ignore[index]
    assert depth["ready"] == 1

    group = start_process_group(
        [*jobkit_command(), "--app", "shop.jobs", "worker", "-p", "1", "-t", "1"],
        env=env, log=tmp_path / "worker.log",
    )  # fmt: skip
    try:
        assert wait_until(lambda: jobkit("dead-letters", "list", "--json"), 60), (
            tmp_path / "worker.log"
        ).read_text()[-2000:]
    finally:
        stop_group(group)
    (record,) = jobkit("dead-letters", "list", "--json")
    assert record["id"] == sent["message_id"] and record["actor"] == "charge"  # type: ignore[index]
    assert record["exc_message"] == "card declined for order 7"  # type: ignore[index]
    replayed = jobkit("dead-letters", "replay", sent["message_id"], "--json")
    assert sent["message_id"] in replayed["replayed"]  # type: ignore[call-overload]
    queues = jobkit("queues", "--json")
    (depth,) = (q for q in queues["queues"] if q["queue"] == "jobkit-test")  # type: ignore[index]
    assert depth["ready"] == 1  # the replay, waiting for a worker


def test_an_app_that_cannot_be_imported_is_one_line(tmp_path: Path) -> None:
    from tests.conftest import EMBEDDED_URL

    result = run_jobkit("--app", "nowhere.jobs", "queues", env=child_env(EMBEDDED_URL))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "no module named 'nowhere'" in result.stderr and "--app" in result.stderr
    env = child_env(EMBEDDED_URL, JOBKIT_APP="json:dumps")
    result = run_jobkit("send", "x", env=env)
    assert result.returncode == 1 and "json.dumps is not a Dramatiq broker" in result.stderr
