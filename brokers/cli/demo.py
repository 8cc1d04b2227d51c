"""``jobkit demo``: send N jobs from app code and watch ``dramatiq actors`` workers run them."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import check_broker, embedded, queue_depths
from ..errors import JobkitError
from ..processes import start_process_group, stop_process_group
from ..urls import BROKER_URL_ENV, spec_from_env
from .output import print_json, print_table, stderr


class DemoError(JobkitError, RuntimeError):
    """The demo could not complete (workers died, or jobs did not finish in time)."""


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "demo",
        help="run jobs end to end on the configured broker (embedded by default)",
        description="Start the broker if it is the embedded one, start `dramatiq actors` "
        "workers as a child process, send N jobs from app code, show progress until all are "
        "processed, print a summary, and stop the workers (also on Ctrl-C or SIGTERM).",
    )
    parser.add_argument(
        "--jobs", "-n", type=_positive, default=1000, help="jobs to send (default: 1000)"
    )
    parser.add_argument(
        "--processes", "-p", type=_positive, default=2, help="worker processes (default: 2)"
    )
    parser.add_argument(
        "--threads", "-t", type=_positive, default=8, help="threads per worker process (default: 8)"
    )
    parser.add_argument(
        "--work-ms",
        type=int,
        default=20,
        metavar="MS",
        help="each job sleeps a random 0..MS ms to stand in for I/O (default: 20)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="give up if jobs are still unfinished after S seconds (default: 300)",
    )
    parser.add_argument(
        "--keep-broker",
        action="store_true",
        help="leave the embedded server running if the demo started it (default: stop it)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    spec = spec_from_env()
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
        with _run_directory() as run_dir:
            summary = _run_demo(args, run_dir, worker_env)
        summary["broker"] = spec.display_url
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if started_broker and not args.keep_broker and spec.home is not None:
            embedded.stop(spec.home)

    if args.json:
        print_json(summary)
    else:
        print_table(
            "jobkit demo",
            ("", "value"),
            [
                (key, summary[key])
                for key in ("broker", "sent", "processed", "failed", "elapsed_s", "jobs_per_s")
            ],
        )
    return 0 if summary["processed"] == summary["sent"] else 1


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _run_directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jobkit-demo-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run_demo(
    args: argparse.Namespace, run_dir: Path, worker_env: dict[str, str]
) -> dict[str, Any]:
    import actors
    from actors.demo import DEMO_QUEUE, completed, demo_job

    check_broker(actors.broker)
    dead_before = _dead_lettered(actors.broker, DEMO_QUEUE)
    log_path = Path(tempfile.gettempdir()) / f"jobkit-demo-workers-{os.getuid()}.log"
    with _workers(args, worker_env, log_path) as workers, _progress() as progress:
        started = time.monotonic()
        sending = progress.add_task("sending", total=args.jobs)
        for index in range(args.jobs):
            demo_job.send(str(run_dir), index, random.randint(0, max(args.work_ms, 0)))
            progress.advance(sending)
        processing = progress.add_task("processed", total=args.jobs)
        deadline = started + args.timeout
        failed = 0
        while True:
            done = len(completed(run_dir))
            progress.update(processing, completed=done)
            if done >= args.jobs:
                break
            if workers.poll() is not None:
                raise DemoError(
                    f"the dramatiq workers exited with code {workers.returncode} after "
                    f"{done}/{args.jobs} jobs: {_last_line(log_path)}"
                )
            failed = _dead_lettered(actors.broker, DEMO_QUEUE) - dead_before
            if done + failed >= args.jobs:
                break
            if time.monotonic() > deadline:
                raise DemoError(
                    f"only {done}/{args.jobs} jobs finished within {args.timeout:.0f} s "
                    f"({failed} dead-lettered); see `jobkit queues` and {log_path}"
                )
            time.sleep(0.05)
        elapsed = time.monotonic() - started
    return {
        "sent": args.jobs,
        "processed": done,
        "failed": failed,
        "elapsed_s": round(elapsed, 2),
        "jobs_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
        "processes": args.processes,
        "threads": args.threads,
    }


def _dead_lettered(broker: Any, queue: str) -> int:
    return sum(d.dead_lettered for d in queue_depths(broker, {queue}) if d.queue == queue)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
    )


@contextlib.contextmanager
def _workers(
    args: argparse.Namespace, env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``dramatiq actors`` in its own process group, always stopped on the way out."""
    from actors.demo import DEMO_QUEUE

    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "actors",
        "--processes",
        str(args.processes),
        "--threads",
        str(args.threads),
        "--queues",
        DEMO_QUEUE,
        "--worker-shutdown-timeout",
        "10000",
    ]
    log_path.unlink(missing_ok=True)
    workers = start_process_group(command, env=env, log=log_path)
    try:
        yield workers
    finally:
        stop_process_group(workers)


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return "(no output)"
