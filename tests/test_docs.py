"""The manual (docs/, README.md): the site builds strictly and every Python block runs.

Each page's ``python`` blocks run in order, in one fresh interpreter, against the
test Redis, after ``brokers.setup_broker()`` (the pages say examples assume the
broker is set up, as ``import actors`` does). ``console`` blocks show shell
sessions: every ``$ jobkit ...`` line in them must parse with the ``jobkit``
command's own parser (and Dramatiq's, or the benchmark suite's, for the options
``jobkit worker`` and ``jobkit bench`` pass on), every ``$ dramatiq ...`` line with
Dramatiq's, and every ``$ make TARGET`` must name a target of the Makefile.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, flush, make_broker
from tests.support.processes import child_env

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
CONSOLE = re.compile(r"^```console\n(.*?)^```", re.M | re.S)
PREAMBLE = "from brokers import setup_broker\nsetup_broker()\n"


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_every_page_of_the_nav_exists_and_every_page_is_in_the_nav() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    listed = set(re.findall(r"([\w/-]+\.md)", nav))
    on_disk = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert listed == on_disk


def test_the_readme_is_a_front_page() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if python_blocks(p)],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_every_python_block_of_a_page_runs(page: Path, tmp_path: Path) -> None:
    broker = make_broker("redis")
    flush(broker)
    try:
        source = PREAMBLE + "\n".join(python_blocks(page))
        env = child_env(REDIS_URL, JOBKIT_METRICS="off")
        result = subprocess.run(
            [sys.executable, "-c", source], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        flush(broker)
        broker.close()


def console_commands(program: str) -> list[tuple[str, list[str]]]:
    """``(line, arguments)`` for every ``$ PROGRAM ...`` line of a ``console`` block.

    ``VAR=value`` prefixes and a path before the program (``.venv/bin/jobkit``) are
    dropped, and so is a trailing ``# comment``.
    """
    found = []
    for page in PAGES:
        for block in CONSOLE.findall(page.read_text()):
            for line in block.splitlines():
                if not line.startswith("$ "):
                    continue
                words = shlex.split(line[2:], comments=True)
                while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                    words.pop(0)
                if words and Path(words[0]).name == program:
                    found.append((f"{page.relative_to(REPO)}: {line}", words[1:]))
    return found


def parse(
    parser: argparse.ArgumentParser, argv: list[str], known: bool = False
) -> tuple[argparse.Namespace | None, list[str]]:
    """Parse like the command would; an argparse error becomes an AssertionError."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            if known:
                return parser.parse_known_args(argv)
            return parser.parse_args(argv), []
    except SystemExit as exit:
        if exit.code == 0:  # --help, --version
            return None, []
        raise AssertionError(errors.getvalue().strip().splitlines()[-1]) from None


def test_every_jobkit_command_in_the_docs_parses() -> None:
    import dramatiq.cli

    from jobkit.cli import build_parser
    from jobkit.cli.worker import dramatiq_argv

    commands = console_commands("jobkit")
    assert commands, "no `$ jobkit` line found in any console block"
    failures = []
    for line, argv in commands:
        try:
            # As jobkit.cli.main: `worker` and `bench` pass options they do not know on.
            args, unknown = parse(build_parser(), argv, known=True)
            if args is None:
                continue
            if args.command == "worker":
                extra = [*unknown, *args.dramatiq_args]
                parse(dramatiq.cli.make_argument_parser(), dramatiq_argv(extra, args.app))
            elif args.command == "bench":
                suite = importlib.import_module("benchmarks.__main__")
                if not args.help_suite:
                    parse(suite.build_parser(), [*unknown, *args.suite_args])
            elif unknown:
                raise AssertionError(f"unrecognized arguments: {' '.join(unknown)}")
        except AssertionError as error:
            failures.append(f"{line}\n    {error}")
    assert not failures, "\n".join(failures)


def test_every_dramatiq_command_and_make_target_in_the_docs_exists() -> None:
    import dramatiq.cli

    failures = []
    for line, argv in console_commands("dramatiq"):
        try:
            parse(dramatiq.cli.make_argument_parser(), argv)
        except AssertionError as error:
            failures.append(f"{line}\n    {error}")
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", makefile, re.M))
    for line, argv in console_commands("make"):
        named = [word for word in argv if not word.startswith("-") and "=" not in word]
        failures += [f"{line}\n    no target {t!r}" for t in named if t not in targets]
    assert not failures, "\n".join(failures)
