"""The manual (docs/, README.md): the site builds strictly and every Python block runs.

Each page's ``python`` blocks run in order, in one fresh interpreter, against the
test Redis, after ``brokers.setup_broker()`` (the pages say examples assume the
broker is set up, as ``import actors`` does). ``console`` blocks show shell
sessions; the commands they name are covered by the CLI and Makefile tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, flush, make_broker
from tests.support.processes import child_env

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
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
