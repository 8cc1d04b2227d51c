"""Prometheus metrics from a real worker group, and `jobkit stats` on top of them."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Broker
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import free_port
from brokers.processes import start_process_group, stop_process_group
from jobkit import exit_codes
from jobkit.settings import mask_url
from tests.conftest import REDIS_URL, env_for, url_for
from tests.support.limited import declare_limited
from tests.support.logged import MARKERS_ENV, declare_logged
from tests.support.processes import REPO, child_env, jobkit_command, run_jobkit, wait_until


def _ends(output: Path) -> int:
    count = 0
    for line in output.read_text().splitlines():
        try:
            count += json.loads(line).get("event") in ("job.succeeded", "job.dead_lettered")
        except json.JSONDecodeError:
            continue
    return count


def _samples(url: str) -> dict[str, dict[tuple, float]]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    found: dict[str, dict[tuple, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _value(samples: dict, name: str, **labels: str) -> float:
    return sum(
        value
        for key, value in samples.get(name, {}).items()
        if all((k, v) in key for k, v in labels.items())
    )


#: The app the test worker groups run, as `jobkit stats` must be told.
WORKER_APP = "tests.support.sentry_worker"
APP = ("--app", WORKER_APP)


def _start(kind: str, tmp_path: Path, port: int) -> tuple:
    output = tmp_path / "worker.out"
    env = child_env(
        url_for(kind),
        JOBKIT_METRICS="on",
        JOBKIT_METRICS_PORT=str(port),
        JOBKIT_METRICS_DIR=str(tmp_path / "metrics"),
        JOBKIT_LOG_FORMAT="json",
        **{MARKERS_ENV: str(tmp_path)},
        **env_for(kind),
    )
    command = [*jobkit_command(), "worker", WORKER_APP, "-p", "2", "-t", "4"]
    return start_process_group(command, env=env, log=output, cwd=REPO), output, env


def test_metrics_endpoint_counts_what_ran(
    real_broker: Broker, real_broker_kind: str, tmp_path: Path
) -> None:
    port = free_port()
    workers, output, env = _start(real_broker_kind, tmp_path, port)
    logged, limited = declare_logged(real_broker), declare_limited(real_broker)
    for n in range(20):
        logged.flaky.send(n, "pw", "note", fail_first=n < 2)
    for n in range(2):
        logged.doomed.send(100 + n, api_key="k")
    for n in range(6):
        limited.limited.send(n)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        assert wait_until(lambda: _ends(output) >= 28, timeout=60), output.read_text()[-3000:]
        # Each process writes its counts once a second: wait for every process's last write.
        samples: dict = {}

        def written() -> bool:
            nonlocal samples
            samples = _samples(url)
            return (
                _value(samples, "jobkit_jobs_total") >= 32
                and _value(samples, "jobkit_jobs_retried_total") >= 4
                and _value(samples, "jobkit_jobs_dead_lettered_total") >= 2
                and _value(samples, "jobkit_job_duration_seconds_count") >= 30
                and _value(samples, "jobkit_jobs_in_flight") == 0
            )

        assert wait_until(written, timeout=10), samples
        stats = run_jobkit(*APP, "stats", "--json", "--interval", "1", "--url", url, env=env)
    finally:
        stop_process_group(workers)

    def value(name: str, **labels: str) -> float:
        return _value(samples, name, **labels)

    assert value("jobkit_jobs_total", actor="flaky", outcome="succeeded") == 20
    assert value("jobkit_jobs_total", actor="flaky", outcome="failed") == 2
    assert value("jobkit_jobs_total", actor="doomed", outcome="failed") == 4
    assert value("jobkit_jobs_retried_total", actor="flaky") == 2
    assert value("jobkit_jobs_retried_total", actor="doomed") == 2
    assert value("jobkit_jobs_dead_lettered_total", actor="doomed", reason="retries_exhausted") == 2
    assert value("jobkit_jobs_total", actor="limited", outcome="succeeded") == 6
    assert value("jobkit_jobs_rate_limited_total", actor="limited") >= 1
    assert value("jobkit_job_duration_seconds_count", actor="flaky") == 22
    assert value("jobkit_job_queue_latency_seconds_count", actor="flaky") == 22
    assert value("jobkit_jobs_in_flight", actor="flaky") == 0
    assert ("jobkit_queue_depth" in samples) and value(
        "jobkit_queue_depth", queue="jobkit-test", state="dead_lettered"
    ) == 2
    # Each of the two worker processes says when its counts run to.
    assert len(samples["jobkit_metrics_written_timestamp_seconds"]) == 2
    assert stats.returncode == 0, stats.stderr
    by_actor = {row["actor"]: row for row in json.loads(stats.stdout)}
    assert by_actor["flaky"]["total_processed"] == 22
    assert by_actor["doomed"]["total_dead_lettered"] == 2


def test_a_taken_metrics_port_is_one_clear_line_and_workers_go_on(
    redis_broker_kind: str, tmp_path: Path
) -> None:
    from tests.conftest import flush, make_broker

    broker = make_broker(redis_broker_kind)
    flush(broker)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        workers, output, _ = _start(redis_broker_kind, tmp_path, port)
        try:
            logged = declare_logged(broker)
            for n in range(5):
                logged.flaky.send(n, "pw", "note")
            assert wait_until(lambda: _ends(output) >= 5, timeout=60), output.read_text()[-3000:]
            # The exporter is a fork that the CLI starts once the workers are up.
            assert wait_until(lambda: "cannot listen on" in output.read_text(), timeout=30)
        finally:
            stop_process_group(workers)
            flush(broker)
            broker.close()
    lines = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    clashes = [e for e in lines if "cannot listen on 127.0.0.1" in e["event"]]
    assert len(clashes) == 1 and "JOBKIT_METRICS_PORT" in clashes[0]["event"]


def test_stats_without_workers_is_one_clear_line() -> None:
    result = run_jobkit(
        "stats", "--url", f"http://127.0.0.1:{free_port()}/metrics", "--interval", "1",
        env=child_env("redis://127.0.0.1:6379/15"),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("jobkit: error: no metrics at http://127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_tally_writes_what_prometheus_client_would_have() -> None:
    import prometheus_client as prom

    from middleware.metric_tally import Tally
    from middleware.metrics import LATENCY_BUCKETS

    def metrics(registry: prom.CollectorRegistry) -> tuple[Any, Any, Any]:
        return (
            prom.Histogram("d", "", ("actor",), buckets=LATENCY_BUCKETS, registry=registry),
            prom.Counter("c", "", ("actor",), registry=registry),
            prom.Gauge("g", "", ("actor",), registry=registry),
        )

    direct, batched = prom.CollectorRegistry(), prom.CollectorRegistry()
    (hist, counter, gauge), (t_hist, t_counter, t_gauge) = metrics(direct), metrics(batched)
    tally = Tally()
    values = [0.0, 0.004, 0.005, 0.0051, 0.3, 1, 2.5, 7, 299.9, 900, 1e6]
    for value in values:
        hist.labels("a").observe(value)
        tally.observe(t_hist.labels("a"), value)
        counter.labels("a").inc()
        tally.inc(t_counter.labels("a"))
        gauge.labels("a").inc()
        tally.inc(t_gauge.labels("a"))
    gauge.labels("a").dec()
    tally.inc(t_gauge.labels("a"), -1)
    assert _values(batched) != _values(direct)  # nothing written yet
    tally.flush()
    assert _values(batched) == _values(direct)


def test_a_job_s_hooks_count_it_time_it_and_show_it_in_flight_while_it_runs() -> None:
    import prometheus_client as prom
    from dramatiq import Message

    from middleware.metrics import LATENCY_BUCKETS, Metrics

    registry = prom.CollectorRegistry()
    metrics = Metrics()
    labels = ("actor", "queue")
    metrics._m = {
        "jobs": prom.Counter("jobs", "", (*labels, "outcome"), registry=registry),
        "latency": prom.Histogram("lat", "", labels, buckets=LATENCY_BUCKETS, registry=registry),
        "duration": prom.Histogram("dur", "", labels, buckets=LATENCY_BUCKETS, registry=registry),
        "in_flight": prom.Gauge("inflight", "", labels, registry=registry),
        "written": prom.Gauge("written", "", registry=registry),
    }

    def value(name: str, **wanted: str) -> float:
        return sum(
            v
            for n, sample_labels, v in _values(registry)
            if n == name and wanted.items() <= sample_labels.items()
        )

    messages = [
        Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={}) for _ in range(2)
    ]
    metrics.before_process_message(None, messages[0])  # type: ignore[arg-type]
    metrics._tally.flush()
    assert value("inflight", actor="job") == 1  # counted while it runs
    metrics.after_process_message(None, messages[0])  # type: ignore[arg-type]
    metrics.after_ack(None, messages[0])  # type: ignore[arg-type]
    metrics.before_process_message(None, messages[1])  # type: ignore[arg-type]
    metrics.after_process_message(None, messages[1], exception=ValueError("no"))  # type: ignore[arg-type]
    metrics.after_nack(None, messages[1])  # type: ignore[arg-type]
    metrics._tally.flush()
    assert value("inflight", actor="job") == 0
    assert value("jobs_total", outcome="succeeded") == 1
    assert value("jobs_total", outcome="failed") == 1
    assert value("lat_count") == 2 and value("dur_count") == 2
    assert value("dur_bucket", le="0.005") == 2  # both took well under 5 ms


def _values(registry: Any) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    ]


def test_only_loopback_addresses_count_as_this_host() -> None:
    from brokers.metrics_exporter import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("10.0.0.5")


def test_the_tally_stamps_each_write_once_its_counts_are_written() -> None:
    import prometheus_client as prom

    from middleware.metric_tally import Tally

    registry = prom.CollectorRegistry()
    counter = prom.Counter("c", "", ("actor",), registry=registry)
    stamps: list[tuple[float, float | None]] = []
    tally = Tally(
        stamp=lambda until: stamps.append(
            (until, registry.get_sample_value("c_total", {"actor": "a"}))
        )
    )
    tally.inc(counter.labels("a"), 3)
    before = time.time()
    tally.flush()
    after = time.time()
    [(until, counted)] = stamps
    assert before <= until <= after
    assert counted == 3  # the stamp comes after the counts it vouches for


def test_workers_write_their_metrics_on_whole_seconds() -> None:
    from middleware.metric_tally import next_write_in

    assert next_write_in(100.25, 1.0) == 0.75
    assert next_write_in(100.0, 1.0) == 1.0
    assert next_write_in(7.5, 5.0) == 2.5


# `jobkit stats`: whose endpoint it reads, and over which window --------------------------


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except (urllib.error.URLError, OSError):
        return False
    return True


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jobkit: error: ")
    return lines[0]


def test_stats_names_another_worker_group_s_endpoint_and_exits_1(
    redis_broker_kind: str, tmp_path: Path
) -> None:
    """The port answers for another project's workers: stats names both groups, exit 1."""
    port = free_port()
    workers, output, env = _start(redis_broker_kind, tmp_path, port)
    url = f"http://127.0.0.1:{port}/metrics"
    elsewhere = "redis://127.0.0.1:6379/9"
    try:
        assert wait_until(lambda: _answers(url), timeout=60), output.read_text()[-3000:]
        group = _samples(url)["jobkit_worker_group_info"]
        other_app = run_jobkit("--app", "actors", "stats", "--interval", "1", env=env)
        other_broker = run_jobkit(
            *APP, "stats", "--interval", "1", env={**env, "JOBKIT_BROKER_URL": elsewhere}
        )
        own = run_jobkit(*APP, "stats", "--interval", "1", "--json", env=env)
    finally:
        stop_process_group(workers)
    broker = mask_url(url_for(redis_broker_kind))
    assert list(group) == [(("app", WORKER_APP), ("broker", broker))]
    line = _one_line(other_app)
    assert f"app {WORKER_APP!r}, broker {broker}" in line
    assert "not this one (app 'actors'" in line and "JOBKIT_METRICS_PORT" in line
    line = _one_line(other_broker)
    assert f"broker {broker})" in line and f"broker {elsewhere})" in line
    assert own.returncode == 0, own.stderr


def _exposition(
    group: tuple[str, str] | None, jobs: dict[str, float], written: list[float]
) -> bytes:
    """What an exporter serves: its group, jobs succeeded per actor, each process's write."""
    import prometheus_client as prom
    from prometheus_client.core import InfoMetricFamily

    class Group:
        def collect(self) -> Iterator[InfoMetricFamily]:
            assert group is not None
            yield InfoMetricFamily("jobkit_worker_group", "", {"app": group[0], "broker": group[1]})

    registry = prom.CollectorRegistry()
    if group is not None:
        registry.register(Group())
    counter = prom.Counter("jobkit_jobs", "", ("actor", "queue", "outcome"), registry=registry)
    for actor, count in jobs.items():
        counter.labels(actor, "q", "succeeded").inc(count)
    gauge = prom.Gauge("jobkit_metrics_written_timestamp_seconds", "", ("pid",), registry=registry)
    for pid, at in enumerate(written):
        gauge.labels(str(pid)).set(at)
    return prom.generate_latest(registry)


@contextlib.contextmanager
def _endpoint(*payloads: bytes) -> Iterator[str]:
    """A stand-in exporter: the n-th request gets ``payloads[n]`` (then the last, again)."""
    served: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = payloads[min(len(served), len(payloads) - 1)]
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


#: The group the stand-in exporters name, and the environment of a `jobkit stats` of it.
GROUP = ("actors", mask_url(REDIS_URL))
STATS_ENV = {"JOBKIT_APP": "actors"}


def _stats(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_jobkit("stats", "--url", url, *args, env=child_env(REDIS_URL, **STATS_ENV))


@pytest.mark.parametrize(
    "payload",
    [_exposition(None, {"a": 1}, [1.0]), b"<html>not metrics</html>\n"],
    ids=["no group info", "not prometheus"],
)
def test_stats_says_so_when_the_endpoint_is_not_a_jobkit_worker_group(payload: bytes) -> None:
    with _endpoint(payload) as url:
        line = _one_line(_stats(url, "--interval", "1"))
    assert url in line and "JOBKIT_METRICS_PORT" in line


def test_stats_rates_divide_by_the_time_between_the_workers_writes() -> None:
    """Counts lag the workers by up to a write: a 1 s window between scrapes can hold two
    writes (2 s of jobs). 100 jobs over writes 2 s apart are 50 jobs/s, not 100. A scrape
    that caught one process before this second's write and one after is taken again."""
    t = time.time()
    payloads = (
        _exposition(GROUP, {"limited": 10}, [t - 1, t]),  # one process yet to write: again
        _exposition(GROUP, {"limited": 20}, [t, t]),
        _exposition(GROUP, {"limited": 120}, [t + 2, t + 2]),
    )
    with _endpoint(*payloads) as url:
        result = _stats(url, "--interval", "1", "--json")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert (row["actor"], row["window_s"], row["jobs_per_s"]) == ("limited", 2, 50)


def test_stats_says_so_when_no_worker_wrote_during_the_window() -> None:
    t = time.time()
    with _endpoint(_exposition(GROUP, {"limited": 5}, [t])) as url:
        line = _one_line(_stats(url, "--interval", "1"))
    assert "no worker process wrote its metrics" in line


@pytest.mark.parametrize("interval", ["0.5", "0", "-1", "nan", "inf"])
def test_stats_refuses_a_window_shorter_than_a_metrics_write(interval: str) -> None:
    t = time.time()
    payloads = (_exposition(GROUP, {"a": 0}, [t]), _exposition(GROUP, {"a": 9}, [t + 1]))
    with _endpoint(*payloads) as url:
        result = _stats(url, "--interval", interval)
    assert result.returncode == exit_codes.USAGE, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"--interval: must be a whole number >= 1, got {interval!r}" in line


def test_stats_with_no_jobs_yet_prints_one_line_and_json_an_empty_list() -> None:
    t = time.time()
    payloads = (_exposition(GROUP, {}, [t]), _exposition(GROUP, {}, [t + 1]))
    with _endpoint(*payloads) as url:
        table = _stats(url, "--interval", "1")
    with _endpoint(*payloads) as url:
        as_json = _stats(url, "--interval", "1", "--json")
    assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
    assert table.stdout.startswith("no jobs counted yet by the worker group at ")
    assert len(table.stdout.splitlines()) == 1
    assert json.loads(as_json.stdout) == []


def _finished_between(output: Path, actor: str, start: float, end: float) -> int:
    """Jobs of ``actor`` that succeeded in (start, end], by the workers' own job logs."""
    count = 0
    for line in output.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("actor") == actor and event.get("event") == "job.succeeded":
            count += start < datetime.fromisoformat(event["ts"]).timestamp() <= end
    return count


def test_stats_counts_what_a_rate_limited_actor_ran_in_each_window(
    redis_broker: Broker, redis_broker_kind: str, tmp_path: Path
) -> None:
    """Through 1 s windows, a 20/s actor on two worker processes: each window's rate is what
    the workers' job logs say ran in it (not a second more or less of counts)."""
    port = free_port()
    workers, output, env = _start(redis_broker_kind, tmp_path, port)
    url = f"http://127.0.0.1:{port}/metrics"
    limited = declare_limited(redis_broker).limited
    for n in range(300):  # 15 s of work at 20/s: more than the windows below take
        limited.send(n)
    try:

        def running() -> bool:
            return _answers(url) and _value(_samples(url), "jobkit_jobs_total", actor="limited") > 0

        assert wait_until(running, timeout=60), output.read_text()[-3000:]
        rows = []
        for _ in range(3):
            result = run_jobkit(*APP, "stats", "--interval", "1", "--json", env=env)
            assert result.returncode == 0, result.stderr
            rows += [row for row in json.loads(result.stdout) if row["actor"] == "limited"]
    finally:
        stop_process_group(workers)
    assert len(rows) == 3 and all(row["jobs_per_s"] > 0 for row in rows), rows
    for row in rows:
        # Whole seconds between two writes: one, or more if a loaded process skipped a write.
        assert row["window_s"] >= 0.95, row
        assert row["window_s"] == pytest.approx(round(row["window_s"]), abs=0.05), row
        counted = round(row["jobs_per_s"] * row["window_s"])
        logged = _finished_between(output, "limited", row["until"] - row["window_s"], row["until"])
        # A job that ends at the edge of a window is counted just before its line is logged.
        assert abs(counted - logged) <= 2, (row, logged)
