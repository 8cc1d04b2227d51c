"""Dramatiq's own tests pass on jobkit's broker classes, but for the listed differences.

See tests/conformance/run.py (what runs, and how) and
tests/conformance/expected_differences.txt (the list, each entry with its reason).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance import run


@pytest.mark.slow
@pytest.mark.timeout(run.RUN_TIMEOUT_S + 120)  # the download, then the bounded run
def test_dramatiq_tests_on_jobkit_brokers_differ_only_as_listed() -> None:
    try:
        outcome, diffs = run.check("jobkit")
    except run.ConformanceError as error:
        pytest.fail(f"conformance: {error}", pytrace=False)
    assert outcome.outcomes, "Dramatiq's tests ran no test"
    if diffs:
        pytest.fail(run.report(outcome, diffs), pytrace=False)


def test_the_expected_differences_parse_and_give_reasons() -> None:
    expected = run.load_expectations()
    assert expected.jobkit or expected.env or expected.deselect
    entries = {**expected.jobkit, **expected.env, **expected.deselect}
    assert all(nodeid.startswith("tests/test_") and "::" in nodeid for nodeid in entries)


def test_an_entry_without_a_reason_is_refused(tmp_path: Path) -> None:
    listing = tmp_path / "expected.txt"
    listing.write_text("jobkit tests/test_redis.py::test_x\n")
    with pytest.raises(run.ConformanceError, match=r"expected.txt:1: write"):
        run.load_expectations(listing)


def test_differences_name_new_failures_and_stale_entries() -> None:
    outcome = run.Outcome(
        brokers="jobkit",
        version="2.2.1",
        collected=["tests/t.py::new", "tests/t.py::fixed", "tests/t.py::known"],
        deselected=[],
        collect_errors={},
        outcomes={"tests/t.py::new": "failed", "tests/t.py::fixed": "passed"}
        | {"tests/t.py::known": "error"},
        messages={"tests/t.py::new": "AssertionError: boom"},
        seconds=1.0,
        log=Path("log"),
    )
    expected = run.Expectations(
        deselect={"tests/t.py::gone_deselect": "why"},
        jobkit={"tests/t.py::fixed": "why", "tests/t.py::known": "why", "tests/t.py::gone": "w"},
    )
    assert run.differences(outcome, expected) == [
        "+ tests/t.py::new: failed (not listed): AssertionError: boom",
        "- tests/t.py::fixed: listed, but passes now: remove its entry",
        "- tests/t.py::gone: listed, but no such test ran: remove or rename its entry",
        "- tests/t.py::gone_deselect: listed to deselect, but no such test: remove its entry",
    ]
    # A run of some tests only: entries for the others are not stale.
    assert len(run.differences(outcome, expected, subset=True)) == 2


def test_the_pin_is_read_from_pyproject(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["redis>=5", "dramatiq[redis]>=2.2.1,<3"]\n')
    assert run.pinned_version(pyproject) == "2.2.1"


def test_a_failed_download_is_one_line_not_a_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An index nothing listens on: pip fails at once, without asking PyPI.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:1/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(run.ConformanceError) as raised:
        run.fetch_sdist("2.2.1", cache=tmp_path)
    message = str(raised.value)
    assert message.startswith("cannot download dramatiq==2.2.1's sdist from PyPI: ")
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # nothing half-downloaded is left as cached
