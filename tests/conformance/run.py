"""Run Dramatiq's own broker, worker and actor tests on jobkit's broker classes.

The tests come from Dramatiq's sdist for the version pinned in pyproject.toml,
downloaded once into ``.cache/conformance/``. They run in a pytest process of
their own, rooted in the unpacked tree, with ``plugin.py`` providing the
fixtures (jobkit's ``PriorityRedisBroker`` and ``PriorityRabbitmqBroker`` as
``brokers.build_broker`` makes them) on Redis db 6 and the RabbitMQ vhost
``jobkit-conformance``. The outcome is compared with
``expected_differences.txt``: a test that does not pass and is not listed, or
a listed test that passes (a stale entry), is a difference.

Alone: ``.venv/bin/python -m tests.conformance.run`` (``--brokers dramatiq``
runs the same tests on Dramatiq's own classes: the baseline).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
#: Gitignored; holds the sdist, its unpacked tests and the last run's logs.
CACHE = REPO / ".cache" / "conformance"
EXPECTED_PATH = HERE / "expected_differences.txt"
#: The run's own database and vhost: the main suite uses dbs 15, 13..7 and vhosts
#: jobkit-test-gw*, the benchmarks db 14 (tests/conftest.py); ensure-services creates the vhost.
REDIS_URL = "redis://127.0.0.1:6379/6"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/jobkit-conformance"
#: Dramatiq's tests of brokers, workers, actors and the middleware the sdist ships
#: (Callbacks); tests/middleware/ is not in the sdist. Only test_redis and
#: test_rabbitmq use the broker fixtures; the rest run on StubBroker with jobkit
#: imported, which must not change Dramatiq's behaviour either.
TEST_FILES = (
    "tests/test_broker.py",
    "tests/test_worker.py",
    "tests/test_actors.py",
    "tests/test_generic_actors.py",
    "tests/test_callbacks.py",
    "tests/test_redis.py",
    "tests/test_rabbitmq.py",
)
#: A hung test fails (pytest-timeout) instead of stalling make test.
PER_TEST_TIMEOUT_S = 120
RUN_TIMEOUT_S = 900
KINDS = ("deselect", "jobkit", "env")
ENTRY = re.compile(r"^(?P<kind>\w+)\s+(?P<nodeid>\S+)\s*(?:#\s*(?P<reason>.*))?$")


class ConformanceError(Exception):
    """The check could not run (download, unpack, a run that did not finish): one line."""


def pinned_version(pyproject: Path = REPO / "pyproject.toml") -> str:
    """The Dramatiq version pyproject.toml pins (its ``==`` or ``>=`` bound)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if requirement.name == "dramatiq":
            for spec in requirement.specifier:
                if spec.operator in ("==", ">="):
                    return spec.version
    raise ConformanceError(f"{pyproject} pins no Dramatiq version (== or >=)")


def fetch_sdist(version: str, cache: Path = CACHE) -> Path:
    """Dramatiq's sdist for ``version``: from the cache, else downloaded from PyPI by pip."""
    sdist = cache / f"dramatiq-{version}.tar.gz"
    if sdist.exists():
        return sdist
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as download:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", f"dramatiq=={version}"]
            + ["--no-binary", ":all:", "--no-deps", "--quiet", "-d", download],
            capture_output=True,
            text=True,
        )
        got = Path(download) / sdist.name
        if result.returncode != 0 or not got.exists():
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            why = lines[-1].strip() if lines else f"pip exited {result.returncode}"
            raise ConformanceError(f"cannot download dramatiq=={version}'s sdist from PyPI: {why}")
        got.replace(sdist)  # whole or absent: a half download never counts as cached
    return sdist


def unpack_tests(sdist: Path, version: str, cache: Path = CACHE) -> Path:
    """The sdist's ``tests/`` unpacked under ``cache`` (once); returns the tree's root.

    Only ``tests/`` is unpacked: the sdist's ``dramatiq/`` beside it would shadow
    the installed package. Two files the sdist lacks are added (not patched):
    ``tests/__init__.py``, since the modules import ``.common``, and
    ``tests/common.py`` (``dramatiq_common.py``).
    """
    root = cache / f"dramatiq-{version}"
    if not (root / "tests").is_dir():
        prefix = f"dramatiq-{version}/tests/"
        staging = Path(tempfile.mkdtemp(dir=cache, prefix="unpack-"))
        try:
            with tarfile.open(sdist) as archive:
                members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
                if not any(m.name.endswith(".py") for m in members):
                    raise ConformanceError(f"{sdist.name} has no {prefix} directory")
                archive.extractall(staging, members=members, filter="data")
            shutil.rmtree(root, ignore_errors=True)
            (staging / f"dramatiq-{version}").replace(root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    (root / "tests" / "__init__.py").touch()
    shutil.copyfile(HERE / "dramatiq_common.py", root / "tests" / "common.py")
    return root


@dataclass
class Expectations:
    """The expected differences: tests never run, and tests expected not to pass."""

    deselect: dict[str, str] = field(default_factory=dict)
    jobkit: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def not_passing(self, brokers: str) -> dict[str, str]:
        """Tests expected not to pass on ``brokers`` (env entries fail on either set)."""
        return {**self.env, **self.jobkit} if brokers == "jobkit" else dict(self.env)


def load_expectations(path: Path = EXPECTED_PATH) -> Expectations:
    """Parse ``kind nodeid  # reason`` lines; every entry must give its reason."""
    expected = Expectations()
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = ENTRY.match(line)
        if not match or match["kind"] not in KINDS or not (match["reason"] or "").strip():
            raise ConformanceError(
                f"{path.name}:{number}: write `<{'|'.join(KINDS)}> <test nodeid>  # reason`"
            )
        entries: dict[str, str] = getattr(expected, match["kind"])
        if match["nodeid"] in entries:
            raise ConformanceError(f"{path.name}:{number}: {match['nodeid']} is listed twice")
        entries[match["nodeid"]] = match["reason"].strip()
    return expected


@dataclass
class Outcome:
    """What one run of Dramatiq's tests did, as the plugin recorded it."""

    brokers: str
    version: str
    collected: list[str]
    deselected: list[str]
    collect_errors: dict[str, str]
    outcomes: dict[str, str]
    messages: dict[str, str]
    seconds: float
    log: Path

    def not_passing(self) -> dict[str, str]:
        return {nodeid: o for nodeid, o in self.outcomes.items() if o != "passed"}

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for outcome in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        parts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        return (
            f"Dramatiq {self.version}'s tests on {self.brokers}'s brokers: {parts}, "
            f"{len(self.deselected)} deselected, in {self.seconds:.0f} s"
        )


@contextlib.contextmanager
def exclusive(cache: Path = CACHE) -> Iterator[None]:
    """One conformance run at a time on this machine: they share db 6 and the vhost."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "run.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_suite(
    root: Path, version: str, brokers: str, deselect: list[str], select: list[str] | None = None
) -> Outcome:
    """Run the tests (``select``: node ids or files; default :data:`TEST_FILES`) in ``root``."""
    outcomes_path = CACHE / f"last-run-{brokers}.json"
    log_path = CACHE / f"last-run-{brokers}.log"
    outcomes_path.unlink(missing_ok=True)
    env = {
        name: value
        for name, value in os.environ.items()
        # Nothing from the calling pytest (an xdist worker) or a developer's jobkit setup;
        # no Sentry either: Dramatiq's tests fail jobs on purpose.
        if not name.startswith(("PYTEST_", "JOBKIT_", "SENTRY_")) and name != "PYTHONPATH"
    }
    jobkit_home = tempfile.mkdtemp(prefix="jk-conf-", dir="/tmp")  # short: socket path limit
    env |= {
        "PYTHONPATH": str(HERE),  # the plugin; jobkit's packages come from the editable install
        "JOBKIT_CONFORMANCE_BROKERS": brokers,
        "JOBKIT_CONFORMANCE_REDIS_URL": REDIS_URL,
        "JOBKIT_CONFORMANCE_RABBITMQ_URL": RABBITMQ_URL,
        "JOBKIT_METRICS": "off",  # as in jobkit's tests: no metrics port per worker
        "JOBKIT_HOME": jobkit_home,
    }
    command = [
        sys.executable, "-m", "pytest", *(select or TEST_FILES),
        # Dramatiq's pyproject is not unpacked (its addopts need pytest-cov) and jobkit's
        # must not apply: an empty config file, and conftest lookup stops at the tree.
        "-c", os.devnull, "--rootdir", str(root), "--confcutdir", str(root),
        "-p", "no:xdist", "-p", "no:cacheprovider", "-p", "plugin",
        "--jobkit-outcomes", str(outcomes_path), "--timeout", str(PER_TEST_TIMEOUT_S),
        "-q", "-rfEs", "--tb=short", "--durations=15",
        *(arg for nodeid in deselect for arg in ("--deselect", nodeid)),
    ]  # fmt: skip
    started = time.monotonic()
    try:
        with log_path.open("w") as log:
            result = subprocess.run(
                command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                timeout=RUN_TIMEOUT_S,
            )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ConformanceError(
            f"Dramatiq's tests did not finish within {RUN_TIMEOUT_S} s (log: {log_path})"
        ) from None
    finally:
        shutil.rmtree(jobkit_home, ignore_errors=True)
    seconds = time.monotonic() - started
    # 0: all passed, 1: some failed; anything else means the run itself broke.
    if result.returncode not in (0, 1) or not outcomes_path.exists():
        tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
        raise ConformanceError(
            f"Dramatiq's tests did not run (pytest exit {result.returncode}): {tail[0]} "
            f"(log: {log_path})"
        )
    data = json.loads(outcomes_path.read_text())
    return Outcome(
        brokers=brokers,
        version=version,
        collected=data["collected"],
        deselected=data["deselected"],
        collect_errors=data["collect_errors"],
        outcomes=data["outcomes"],
        messages=data["messages"],
        seconds=seconds,
        log=log_path,
    )


def differences(outcome: Outcome, expected: Expectations, *, subset: bool = False) -> list[str]:
    """One line per difference from the list; empty when the run is as expected.

    ``subset``: only some tests ran, so entries for tests that did not run are not stale.
    """
    lines = [
        f"collection error in {nodeid}: {why}" for nodeid, why in outcome.collect_errors.items()
    ]
    listed = expected.not_passing(outcome.brokers)
    for nodeid, result in outcome.not_passing().items():
        if nodeid not in listed:
            why = outcome.messages.get(nodeid, "")
            lines.append(f"+ {nodeid}: {result} (not listed): {why}")
    ran = set(outcome.outcomes)
    for nodeid in listed:
        if outcome.outcomes.get(nodeid) == "passed":
            lines.append(f"- {nodeid}: listed, but passes now: remove its entry")
        elif nodeid not in ran and not subset:
            lines.append(f"- {nodeid}: listed, but no such test ran: remove or rename its entry")
    if not subset:
        for nodeid in sorted(set(expected.deselect) - set(outcome.deselected)):
            lines.append(f"- {nodeid}: listed to deselect, but no such test: remove its entry")
    return lines


def check(brokers: str = "jobkit", select: list[str] | None = None) -> tuple[Outcome, list[str]]:
    """Fetch, unpack and run; return the outcome and its differences from the list."""
    expected = load_expectations()
    version = pinned_version()
    installed = metadata.version("dramatiq")
    if installed != version:
        raise ConformanceError(
            f"installed Dramatiq is {installed} but pyproject.toml pins {version}: its tests "
            "would not match the library (make venv, or move the pin and review the list)"
        )
    with exclusive():
        root = unpack_tests(fetch_sdist(version), version)
        outcome = run_suite(root, version, brokers, sorted(expected.deselect), select)
    return outcome, differences(outcome, expected, subset=select is not None)


def report(outcome: Outcome, diffs: list[str]) -> str:
    """A readable account: the summary, what does not pass and why, and any differences."""
    lines = [outcome.summary()]
    for nodeid, result in sorted(outcome.not_passing().items()):
        lines.append(f"  {result}: {nodeid}: {outcome.messages.get(nodeid, '')}")
    if diffs:
        lines.append(f"differences from {EXPECTED_PATH.relative_to(REPO)}:")
        lines += [f"  {line}" for line in diffs]
        lines.append(f"full log: {outcome.log}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", choices=("jobkit", "dramatiq"), default="jobkit")
    parser.add_argument("tests", nargs="*", help="node ids or files (default: the whole set)")
    args = parser.parse_args(argv)
    try:
        outcome, diffs = check(args.brokers, args.tests or None)
    except ConformanceError as error:
        print(f"conformance: {error}", file=sys.stderr)
        return 2
    print(report(outcome, diffs))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
