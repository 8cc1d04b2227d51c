"""Types (issue 18): mypy finds no error in the product packages.

The configuration lives in pyproject.toml (``[tool.mypy]``: the packages, the
checks, and the short list of untyped third-party modules); this runs it in
``make test``, so a change that breaks the types, or a hook override that no
longer matches Dramatiq's signature, fails the suite. Broker-free.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a first run, without mypy's cache (.mypy_cache), takes up to a minute
def test_mypy_finds_no_error_in_the_product_packages() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=170
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout
