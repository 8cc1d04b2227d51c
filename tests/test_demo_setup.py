"""A new user's way to the demo: `make demo` installs jobkit alone, and the demo's closing
hint is a command that runs where the user is."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobkit import demo
from tests.support.processes import REPO, jobkit_command

# ---------------------------------------------------------------- the closing hint


def fake_script(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_a_jobkit_not_on_path_is_named_by_the_path_it_was_run_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = fake_script(tmp_path / ".venv" / "bin" / "jobkit")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    assert demo.jobkit_command() == ".venv/bin/jobkit"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not under the working directory: absolute
    assert demo.jobkit_command() == str(script)


def test_a_jobkit_on_path_is_named_jobkit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = fake_script(tmp_path / "bin" / "jobkit")
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    assert demo.jobkit_command() == "jobkit"
    # Another jobkit first on PATH is not this one: the path this one was run by.
    other = fake_script(tmp_path / "other" / "jobkit")
    monkeypatch.setenv("PATH", f"{other.parent}:{script.parent}")
    assert demo.jobkit_command() == str(script)


def test_python_dash_m_is_named_with_this_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(REPO / "jobkit" / "cli" / "__main__.py"), "demo"])
    monkeypatch.setenv("PATH", "/nowhere")
    assert demo.jobkit_command() == f"{shlex.quote(sys.executable)} -m jobkit.cli"
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert demo.jobkit_command() == f"{Path(sys.executable).name} -m jobkit.cli"


def test_the_closing_hint_runs_as_printed_where_jobkit_is_not_on_path(
    home: Path, tmp_path: Path
) -> None:
    """The issue's new user: `make demo` ran `.venv/bin/jobkit`, whose directory is not on PATH."""
    env = dict(os.environ, PATH="/usr/bin:/bin", PYTHONPATH=str(REPO), JOBKIT_HOME=str(home))
    env.pop("JOBKIT_BROKER_URL", None)
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)

    result = run([*jobkit_command(), "demo", "--jobs", "5"])
    assert result.returncode == 0, result.stderr[-3000:]
    hint = next(line for line in result.stdout.splitlines() if line.startswith("dead letters:"))
    # The demo stopped the server it started, so the hint starts it first.
    start, command = hint.removeprefix("dead letters:").split("   (", 1)[0].split(" && ")
    assert start.strip().endswith(" embedded start") and command.endswith(" dead-letters list")
    argv = shlex.split(command)
    assert shutil.which(argv[0], path=env["PATH"]) or Path(cwd, argv[0]).is_file(), hint
    started = run(shlex.split(start))
    assert started.returncode == 0, started.stderr
    listed = run([*argv, "--json"])
    assert listed.returncode == 0, listed.stderr
    assert '"actor": "make_thumbnail"' in listed.stdout


# ---------------------------------------------------------------- make demo


def make_dry_run(target: str, venv: Path) -> list[str]:
    """The commands ``make TARGET`` would run with this virtualenv (``make -n``)."""
    result = subprocess.run(
        ["make", "-n", "-C", str(REPO), target, f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def installs(commands: list[str]) -> list[str]:
    return [line.split("pip install --quiet ", 1)[1] for line in commands if "pip install" in line]


def test_make_demo_installs_jobkit_alone_and_make_test_the_extras(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    assert installs(make_dry_run("demo", venv)) == ["--upgrade pip", "-e ."]
    assert installs(make_dry_run("test", venv)) == ["--upgrade pip", "-e '.[test,bench]'"]


def stamp(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def test_make_demo_and_make_test_each_install_what_they_need_whichever_comes_first(
    tmp_path: Path,
) -> None:
    venv = tmp_path / ".venv"
    stamp(venv / "bin" / "python")
    stamp(venv / ".installed-demo")  # after `make demo`
    assert installs(make_dry_run("test", venv)) == ["-e '.[test,bench]'"]
    assert installs(make_dry_run("demo", venv)) == []
    (venv / ".installed-demo").unlink()
    stamp(venv / ".installed")  # after `make test` alone
    assert installs(make_dry_run("demo", venv)) == ["-e ."]
    assert installs(make_dry_run("test", venv)) == []
