"""``jobkit demo``: every shipped job end to end on the configured broker (embedded by default).

The demo generates sample photos and orders under ``$JOBKIT_HOME/demo``, starts a
local HTTP server (the site to scrape and the webhook receiver), starts ``dramatiq``
workers, sends the tour (:mod:`.tour`) from app code, shows live progress per actor
from the workers' JSON job events, and prints what happened to every job and where the
outputs are. Some jobs are meant to fail: they end in the dead-letter store, which
``jobkit dead-letters list`` shows.

Each run has queues of its own (:mod:`.run_queues`): its jobs go there, its workers
(:mod:`.run_workers`) consume nothing else, and they are deleted when it ends, also on
an error, Ctrl-C or SIGTERM. Other workers and jobs on the same broker neither see nor
change a run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from dramatiq import Broker
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from brokers import check_broker, embedded
from brokers.processes import start_process_group, stop_process_group
from brokers.queue_deletion import delete_queues
from brokers.urls import BROKER_URL_ENV, configured_spec
from jobkit import exit_codes
from jobkit import settings as jobkit_settings
from jobkit.app import import_app
from jobkit.arguments import whole
from jobkit.errors import JobkitError
from jobkit.output import print_json, print_line, print_table, stderr

from .local_site import LocalSite
from .run_queues import RunQueues, refile_dead_letters
from .samples import make_samples
from .tour import SHIPPED_JOBS, Outputs, send_tour, tour_queues
from .tracker import Tracker

#: What the demo's workers load: the shipped jobs, consuming the queues given with -Q.
WORKER_APP = f"{__name__}.run_workers:broker"
#: The default ``--output``, under ``JOBKIT_HOME``.
OUTPUT_IN_HOME = "demo"
#: Marks a directory as the demo's own, so a second run may clear it.
MARKER = ".jobkit-demo"
#: Limits low enough that the tour shows deferrals, high enough to stay quick.
DEMO_SETTINGS = {
    "JOBKIT_EMAIL_RATE_LIMIT": "4/s",
    "JOBKIT_SCRAPE_RATE_LIMIT": "3/s",
}


class DemoError(JobkitError, RuntimeError):
    """The demo could not complete (workers died, or jobs did not finish in time)."""


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "demo",
        help="run every shipped job end to end on the configured broker (embedded by default)",
        description="Generate sample photos and orders, start a local website and webhook "
        "receiver, start `dramatiq` workers of the shipped jobs, send emails, thumbnails, a "
        "report, a crawl, webhooks, periodic jobs and a bulk load of small jobs in a mix of "
        "priorities; show live progress per actor and a summary (processed, retried, "
        "deferred by rate limits, dead-lettered, where outputs were written). Some jobs fail "
        "on purpose and end in the dead-letter store. The run's jobs go to queues of its own "
        "(jobkit-demo-<run>.<queue>), which only its workers consume: other workers on the "
        "broker neither take them nor lose jobs to the demo. At the end, also on Ctrl-C, the "
        "workers are stopped and those queues deleted with whatever they still hold.",
    )
    parser.add_argument(
        "--jobs", "-n", type=whole(0), default=500,
        help="small jobs in the bulk load, besides the tour (default: 500)",
    )  # fmt: skip
    parser.add_argument(
        "--processes", "-p", type=whole(1), default=2, help="worker processes (default: 2)"
    )
    parser.add_argument(
        "--threads", "-t", type=whole(1), default=8, help="threads per worker process (default: 8)"
    )
    parser.add_argument(
        "--work-ms", type=whole(0), default=20, metavar="MS",
        help="each small job sleeps a random 0..MS ms to stand in for I/O (default: 20)",
    )  # fmt: skip
    parser.add_argument(
        "--output", "-o", type=Path, default=None, metavar="DIR",
        help="where samples and outputs go; cleared first if an earlier demo made it "
        f"(default: $JOBKIT_HOME/{OUTPUT_IN_HOME}; JOBKIT_HOME defaults to ./.jobkit)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=whole(1), default=120, metavar="S",
        help="give up if jobs are still unfinished after S seconds (default: 120)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-broker", action="store_true",
        help="leave the embedded server running if the demo started it (default: stop it)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    spec = configured_spec()
    started_broker = False
    worker_env = dict(os.environ)
    if spec.kind == "embedded":
        assert spec.home is not None
        started_broker = not embedded.is_running(embedded.EmbeddedPaths(spec.home))
        embedded.ensure_server(spec.home)
        # An absolute home, so workers find the same server whatever their cwd.
        worker_env[BROKER_URL_ENV] = f"embedded://{spec.home}"

    previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        # Actors read their limits when declared: the demo's must be set before the import.
        os.environ.update(DEMO_SETTINGS)
        jobkit_settings.forget()  # read again, with the demo's values, when the jobs load
        jobs = import_app(SHIPPED_JOBS)
        check_broker(jobs.broker)  # a dead broker stops the demo before it writes anything
        out = Outputs(_fresh_directory(args.output or default_output()))
        queues = RunQueues()
        try:
            summary = _run_tour(jobs, queues, args, out, worker_env)
        finally:
            # The workers are stopped: what they left in the run's queues goes too.
            _remove_run_queues(jobs.broker, queues)
        summary["broker"] = spec.display_url
        summary["queues"] = queues.pattern
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        stopped_broker = started_broker and not args.keep_broker and spec.home is not None
        if stopped_broker and spec.home is not None:
            embedded.stop(spec.home)

    if args.json:
        print_json(summary)
    else:
        _print_summary(summary, stopped_broker=stopped_broker)
    if summary["surprises"]:
        for line in summary["surprises"]:
            stderr.print(f"jobkit demo: {line}")
        return exit_codes.ERROR
    return exit_codes.OK


def default_output() -> Path:
    """``$JOBKIT_HOME/demo``: the demo's files live with the rest of jobkit's local data."""
    return jobkit_settings.current().home.expanduser() / OUTPUT_IN_HOME


def _remove_run_queues(broker: Broker, queues: RunQueues) -> None:
    """Delete the run's queues, its dead letters filed under their actors' queues first;
    if the broker refuses, say so in one line and go on.
    """
    try:
        refile_dead_letters(broker, queues)
        delete_queues(broker, queues.used)
    except Exception as error:  # noqa: BLE001 - the run's own outcome matters more
        stderr.print(
            f"jobkit demo: could not delete this run's queues {queues.pattern} "
            f"({type(error).__name__}: {error}); no worker consumes them, so they change "
            "no later run"
        )


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(exit_codes.TERMINATED)


def _fresh_directory(path: Path) -> Path:
    path = path.resolve()
    if path.exists():
        if not (path / MARKER).exists():
            if any(path.iterdir()):
                raise DemoError(
                    f"{path} exists and was not made by jobkit demo; choose another --output"
                )
        else:
            shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).touch()
    return path


def _run_tour(
    jobs: ModuleType,
    queues: RunQueues,
    args: argparse.Namespace,
    out: Outputs,
    worker_env: dict[str, str],
) -> dict[str, Any]:
    # The workers and this process (which declares the actors) see the same settings.
    settings = {
        **DEMO_SETTINGS,
        "JOBKIT_LOG_FORMAT": "json",
        "JOBKIT_EMAIL_OUTBOX": str(out.outbox),
        "JOBKIT_SCRAPE_DIR": str(out.scraped),
        "JOBKIT_REPORT_DIR": str(out.reports),
    }
    worker_env.update(settings)
    worker_env.pop("JOBKIT_SMTP_URL", None)  # the demo's emails go to the outbox, never out
    samples = make_samples(out.root / "samples")
    tracker = Tracker(out.root / "workers.log")
    started = time.monotonic()
    with (
        LocalSite(out.webhooks) as site,
        _workers(args, worker_env, tracker.log, tour_queues(jobs, queues)) as workers,
        _progress() as progress,
    ):
        send_tour(
            jobs, queues, tracker, samples, site, out, load_jobs=args.jobs, work_ms=args.work_ms
        )
        progress.console.print(
            f"jobkit demo: sent {tracker.sent} jobs to this run's queues {queues.pattern}"
        )
        tasks = {
            actor: progress.add_task(actor, total=counts.sent, retried=0, deferred=0, dead=0)
            for actor, counts in tracker.actors.items()
        }
        deadline = started + args.timeout
        while True:
            tracker.poll()
            for actor, task in tasks.items():
                counts = tracker.actors[actor]
                progress.update(
                    task,
                    completed=counts.finished,
                    retried=counts.retried,
                    deferred=counts.deferred,
                    dead=counts.dead_lettered,
                )
            if tracker.finished >= tracker.sent:
                break
            if workers.poll() is not None:
                raise DemoError(
                    f"the dramatiq workers exited with code {workers.returncode} after "
                    f"{tracker.finished}/{tracker.sent} jobs; see {tracker.log}"
                )
            if time.monotonic() > deadline:
                raise DemoError(
                    f"only {tracker.finished}/{tracker.sent} jobs finished within "
                    f"{args.timeout:.0f} s; see the workers' log {tracker.log}"
                )
            time.sleep(0.1)
        elapsed = time.monotonic() - started
    outputs = out.of_actor()
    return {
        "elapsed_s": round(elapsed, 2),
        "output_dir": str(out.root),
        "workers_log": str(tracker.log),
        "processes": args.processes,
        "threads": args.threads,
        "actors": {
            actor: {
                "sent": counts.sent,
                "processed": counts.processed,
                "retried": counts.retried,
                "deferred": counts.deferred,
                "dead_lettered": counts.dead_lettered,
                "meant_to_fail": counts.meant_to_fail,
                "output": _describe_output(outputs.get(actor)),
            }
            for actor, counts in tracker.actors.items()
        },
        "totals": {
            key: sum(getattr(c, key) for c in tracker.actors.values())
            for key in ("sent", "processed", "retried", "deferred", "dead_lettered")
        },
        "surprises": tracker.surprises(),
    }


def _describe_output(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    if path.is_file():
        return {"path": str(path), "files": 1, "lines": len(path.read_text().splitlines())}
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return {"path": str(path), "files": len(files)}


def _print_summary(summary: dict[str, Any], *, stopped_broker: bool) -> None:
    root = Path(summary["output_dir"])
    rows = []
    for actor, counts in sorted(summary["actors"].items()):
        output = counts["output"]
        where = "-"
        if output is not None:
            unit = f"{output['lines']} lines" if "lines" in output else f"{output['files']} files"
            where = f"{os.path.relpath(output['path'], root)} ({unit})"
        rows.append(
            (
                actor,
                counts["sent"],
                counts["processed"],
                counts["retried"],
                counts["deferred"],
                counts["dead_lettered"],
                where,
            )
        )
    totals = summary["totals"]
    rows.append(
        ("total", totals["sent"], totals["processed"], totals["retried"], totals["deferred"],
         totals["dead_lettered"], "")
    )  # fmt: skip
    print_table(
        f"jobkit demo on {summary['broker']}: {summary['elapsed_s']} s",
        ("actor", "sent", "processed", "retried", "deferred", "dead letters", "output"),
        rows,
        whole=("actor",),
    )
    planned = {a: c["meant_to_fail"] for a, c in summary["actors"].items() if c["meant_to_fail"]}
    if planned:
        print_line(
            f"dead-lettered on purpose: {sum(planned.values())} of "
            f"{totals['dead_lettered']} ({', '.join(sorted(planned))})"
        )
    print_line(f"outputs under {root}; worker log {summary['workers_log']}")
    jobkit = jobkit_command()
    # The demo stopped the server it started; listing does not start one (it would linger).
    start = f"{jobkit} embedded start && " if stopped_broker else ""
    print_line(f"dead letters: {start}{jobkit} dead-letters list   (replay, show, purge them too)")
    print_line(f"every job: {start}{jobkit} jobs list --state failed   (show, wait, cancel too)")


def jobkit_command() -> str:
    """``jobkit`` as the user can type it here: ``jobkit`` if that is this one on ``PATH``,
    else the path this one was run by (``.venv/bin/jobkit``), else ``python -m jobkit.cli``.
    """
    script = Path(sys.argv[0])
    if script.name == "jobkit":
        on_path = shutil.which("jobkit")
        if on_path is not None and Path(on_path).resolve() == script.resolve():
            return "jobkit"
        return shlex.quote(_as_typed(script))
    name = Path(sys.executable).name
    python = name if shutil.which(name) == sys.executable else _as_typed(Path(sys.executable))
    return f"{shlex.quote(python)} -m jobkit.cli"


def _as_typed(path: Path) -> str:
    """``path`` relative to the working directory if it is under it, else absolute."""
    path = path.absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:>22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("retried {task.fields[retried]}  deferred {task.fields[deferred]}  "
                   "dead {task.fields[dead]}"),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
    )  # fmt: skip


@contextlib.contextmanager
def _workers(
    args: argparse.Namespace, env: dict[str, str], log_path: Path, queues: list[str]
) -> Iterator[subprocess.Popen[bytes]]:
    """The shipped jobs' workers on the run's ``queues`` only, in their own process group,
    always stopped on the way out.
    """
    command = [
        sys.executable, "-m", "dramatiq", WORKER_APP,
        "--processes", str(args.processes),
        "--threads", str(args.threads),
        "--worker-shutdown-timeout", "10000",
        "--queues", *queues,
    ]  # fmt: skip
    log_path.unlink(missing_ok=True)
    workers = start_process_group(command, env=env, log=log_path)
    try:
        yield workers
    finally:
        try:
            stop_process_group(workers)
        except BaseException:
            # Ctrl-C again while they stop: stop them now rather than leave them running.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(workers.pid, signal.SIGKILL)
            raise
