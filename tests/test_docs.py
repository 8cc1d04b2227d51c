"""The manual (docs/, README.md): the site builds strictly and every code block works.

``python`` blocks run exactly as written, as a reader pasting them would: each page's
blocks in order (a page may build on its earlier blocks, never on a later one or on
another page), concatenated into one fresh interpreter, with nothing added before them.
They run with no ``JOBKIT_*`` variable but a private ``JOBKIT_HOME``, so on the embedded
broker (whose server is stopped afterwards), in an empty working directory, with the
repository on ``PYTHONPATH``. So an example imports what it needs: ``import actors`` for
the shipped jobs, or ``from brokers import setup_broker`` and ``setup_broker()`` before
declaring actors of its own (jobkit's actor options exist only once its middleware is
installed). Blocks that are not meant to run (output, shell sessions, settings) are
fenced as another language: ``console`` for shell sessions, ``text`` for output,
``toml``/``ini``/``json`` for files.

``console`` blocks show shell sessions: every ``$ jobkit ...`` line in them must parse
with the ``jobkit`` command's own parser (and Dramatiq's, or the benchmark suite's, for
the options ``jobkit worker`` and ``jobkit bench`` pass on), every ``$ dramatiq ...`` line
with Dramatiq's, and every ``$ make TARGET`` must name a target of the Makefile.
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

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
#: A fence may carry attributes after its language, e.g. python title="shop.py".
BLOCK = re.compile(r"^```python(?:[ \t][^\n]*)?\n(.*?)^```", re.M | re.S)
CONSOLE = re.compile(r"^```console(?:[ \t][^\n]*)?\n(.*?)^```", re.M | re.S)
#: Code fence languages: ``python`` runs, ``console`` is parsed, the others are shown
#: as they are (a bare fence is plain text too).
LANGUAGES = {"", "python", "console", "text", "toml", "ini", "json"}


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
def test_every_python_block_of_a_page_runs_as_written(
    page: Path, home: Path, tmp_path: Path
) -> None:
    source = "\n".join(python_blocks(page))
    env = {name: value for name, value in os.environ.items() if not name.startswith("JOBKIT_")}
    env.update(JOBKIT_HOME=str(home), PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", source], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # Not Dramatiq's default broker (a RabbitMQ on localhost): the examples set jobkit's up.
    assert (home / "valkey").is_dir(), f"{page.name}: no block started the embedded broker"


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if python_blocks(p)],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_no_python_block_uses_an_undefined_name(page: Path) -> None:
    """Names in branches the run does not take (an ``except``, an ``if``) exist too."""
    source = "\n".join(python_blocks(page))
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run(
        [str(ruff), "check", "--isolated", "--no-cache", "--select", "F821",
         "--output-format", "concise", "--stdin-filename", f"{page.stem}.py", "-"],
        input=source, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_code_block_is_fenced_with_a_known_language() -> None:
    """A block in another spelling (``py``, ``bash``, indented) would escape the checks here."""
    failures = []
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            fence = re.match(r"^(\s*)(```+|~~~+)\s*([^\s`]*)", line)
            if fence is None:
                continue
            indent, _, language = fence.groups()
            where = f"{page.relative_to(REPO)}:{number}: {line.strip()}"
            if indent:
                failures.append(f"{where}: indented (start fences at the line's start)")
            elif language not in LANGUAGES:
                failures.append(f"{where}: use one of {sorted(LANGUAGES)}")
    assert not failures, "\n".join(failures)


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


def reasons_the_code_gives() -> set[str]:
    """What ``dead_letter_reason`` returns, and the ``reason`` of every product error."""
    import ast
    import inspect
    import pkgutil

    import brokers
    import middleware
    from middleware import outcomes

    function = ast.parse(inspect.getsource(outcomes.dead_letter_reason))
    returned = [node for node in ast.walk(function) if isinstance(node, ast.Return)]
    found = {
        node.value
        for value in returned
        for node in ast.walk(value)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    for package in (brokers, middleware):
        for module_info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(module_info.name)
            for value in vars(module).values():
                if isinstance(value, type) and issubclass(value, BaseException):
                    reason = vars(value).get("reason")
                    if isinstance(reason, str):
                        found.add(reason)
    return found


def test_the_dead_letter_reasons_are_the_same_in_code_cli_and_docs() -> None:
    from jobkit.cli import build_parser
    from middleware.dead_letters import REASONS

    declared = set(REASONS)
    assert len(declared) == len(REASONS), "a reason is listed twice"
    assert reasons_the_code_gives() == declared

    help_text = " ".join(parse_help(build_parser(), ["dead-letters", "--help"]).split())
    listed = re.search(r"Reasons: ([\w, ]+)\.", help_text)
    assert listed, help_text
    assert set(listed.group(1).split(", ")) == declared
    option_help = " ".join(parse_help(build_parser(), ["dead-letters", "list", "--help"]).split())
    assert all(reason in option_help for reason in declared), option_help

    page = (REPO / "docs" / "middleware" / "dead-letters.md").read_text()
    row = re.search(r"^\| `reason` \| (.*) \|$", page, re.M)
    assert row, "docs/middleware/dead-letters.md: no `reason` row in the record's table"
    # The reasons are the row's code words outside parentheses (inside: what they mean).
    assert set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", row.group(1)))) == declared


def parse_help(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """What ``jobkit ARGV`` (a ``--help``) prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        parser.parse_args(argv)
    return printed.getvalue()
