"""The `jobkit` command's input and output: checked options, ids by prefix, --json, exit codes.

A bad option is one line naming it, exit code USAGE, never a usage dump; an unknown or
ambiguous id is one line, exit code ERROR, for show, replay and purge alike; tables show
ids whole; every listing has --json, `[]` when empty, and one human line otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Broker, Message

from brokers import queue_depths
from brokers.dead_letter_store import DeadLetterStore, dead_letter_store
from brokers.id_prefixes import AmbiguousId, UnknownId, match_pattern, resolve_id
from jobkit import exit_codes, output
from jobkit.cli import build_parser
from jobkit.cli.environment import READS
from jobkit.output import SHORT_ID
from jobkit.settings import Settings, env_names
from middleware.dead_letters import REASONS, message_as_sent, new_record
from tests.conftest import EMBEDDED_URL, env_for, url_for
from tests.support.processes import REPO, child_env, run_jobkit

# Ids that share prefixes: "abcd" names two, "abcd1" one, "9999" none.
ID_1 = "abcd1111-0000-4000-8000-000000000001"
ID_2 = "abcd2222-0000-4000-8000-000000000002"
ID_3 = "f8f0ae8f-6b3e-44e1-9d5c-0123456789ab"


def one_error_line(result: Any) -> str:
    """The one line on stderr, checked to be jobkit's and alone."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jobkit: error: "), result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr
    return lines[0]


# ---------------------------------------------------------------- bad options: one line, exit 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["dead-letters", "list", "--limit", "0"],
         "--limit: must be a whole number >= 1, got '0' (see jobkit dead-letters list --help)"),
        (["dead-letters", "list", "--limit", "-1"], "--limit: must be a whole number >= 1"),
        (["dead-letters", "list", "--limit", "ten"], "--limit: must be a whole number >= 1"),
        (["dead-letters", "list", "--reason", "bogus"],
         "--reason: invalid choice 'bogus'; choose from retries_exhausted, "),
        (["dead-letters", "list", "--since", "yesterday"], "--since: must be an age (30m"),
        (["dead-letters", "list", "--queue", " "], "--queue: must be a name, not blank"),
        (["dead-letters", "replay", "--all", "--actor", ""], "--actor: must be a name"),
        (["dead-letters", "purge", "--all", "--older-than=-1d"],
         "--older-than: must be a duration >= 0"),
        (["dead-letters", "show", "ab"],
         "ID: must be an id or its first 4 or more characters, got 'ab'"),
        (["dead-letters", "purge", "abcd", "a*c?"], "ID: must be an id or its first 4"),
        (["send", "ping", "--delay", "-5"], "--delay: must be a duration >= 0"),
        (["send", "ping", "--delay", "soon"], "--delay: must be a duration >= 0"),
        (["send", "ping", "--priority", "asap"], "--priority: invalid priority 'asap'"),
        (["send", "ping", "--kwargs", "{bad"], "--kwargs: not valid JSON"),
        (["send", "ping", "--kwargs", "[1]"], "--kwargs: must be a JSON object"),
        (["queues", "-q", ""],
         "--queue: must be a name, not blank, got '' (see jobkit queues --help)"),
        (["--app", "not a module", "queues"],
         "--app: must be an importable module, or module:attribute"),
        # argparse's own errors
        (["dead-letters", "list", "--bogus"],
         "unrecognized arguments: --bogus (see jobkit dead-letters list --help)"),
        (["queues", "extra"], "unrecognized arguments: extra (see jobkit queues --help)"),
        (["dead-letters", "list", "--limit"], "--limit: expected one argument"),
        (["dead-letters", "show"],
         "the following arguments are required: ID (see jobkit dead-letters show --help)"),
        (["dead-letters"], "the following arguments are required: ACTION"),
        (["frob"], "COMMAND: invalid choice 'frob'; choose from demo, worker, "),
        (["demo", "--jobs", "-1"], "--jobs: must be a whole number >= 0"),
        (["stats", "--url", "127.0.0.1:9191/metrics"],
         "--url: no scheme; did you mean 'http://127.0.0.1:9191/metrics'?"),
        (["stats", "--interval", "0.5"], "--interval: must be a whole number >= 1"),
        # found after parsing: still usage
        (["dead-letters", "replay", "abcd", "--all"],
         "give dead letter ids, or --all with filters, not both "
         "(see jobkit dead-letters replay --help)"),
        (["dead-letters", "purge"], "give dead letter ids, or --all"),
    ],
)  # fmt: skip
def test_a_bad_option_is_one_line_naming_it_and_exits_usage(args: list[str], expected: str) -> None:
    result = run_jobkit(*args, env=child_env(EMBEDDED_URL))
    assert result.returncode == exit_codes.USAGE, result.stderr
    line = one_error_line(result)
    assert expected in line
    assert re.search(r"\(see jobkit[\w -]* --help\)$", line), line
    assert result.stdout == ""


#: Options that take a value but are not (yet) range-checked, with who owns them.
UNCHECKED = {
    ("jobkit send", "actor"),  # any name: checked against the app's actors when sent
    ("jobkit send", "args"),  # JSON, else text: checked against the actor's signature
}


def _parsers(
    parser: argparse.ArgumentParser, path: str = "jobkit"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_that_takes_a_value_has_a_checking_converter_or_choices() -> None:
    plain = (None, int, float, str)
    unchecked = set()
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            takes_value = action.nargs != 0 and action.nargs not in (argparse.REMAINDER,)
            if (
                not takes_value
                or isinstance(action, argparse._SubParsersAction | argparse._HelpAction)
                or action.choices is not None
                or action.type not in plain
            ):
                continue
            unchecked.add((path, max(action.option_strings, key=len, default=action.dest)))
    assert unchecked <= UNCHECKED, sorted(unchecked - UNCHECKED)


# ---------------------------------------------------------------- exit codes, documented once


def test_the_exit_codes_table_of_the_cli_reference_is_exit_codes_py() -> None:
    page = (REPO / "docs" / "cli.md").read_text()
    section = page.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {
        int(code): name for code, name in re.findall(r"^\| (\d+) \| `(\w+)` \|", section, re.M)
    }
    defined = {
        value: name
        for name, value in vars(exit_codes).items()
        if name.isupper() and isinstance(value, int)
    }
    assert documented == defined


# ---------------------------------------------------------------- ids by unique prefix


def test_resolve_id_picks_the_one_meant_or_says_why_not() -> None:
    ids = [ID_1, ID_2, ID_3]
    args = {"what": "dead letter", "listing": "jobkit dead-letters list"}
    assert resolve_id("abcd1", ids, **args) == ID_1
    assert resolve_id(ID_2, ids, **args) == ID_2
    assert resolve_id("abcd", ["abcd", "abcde"], **args) == "abcd"  # exact wins
    with pytest.raises(AmbiguousId, match=r"^2 dead letters have ids starting 'abcd' .*type more"):
        resolve_id("abcd", ids, **args)
    with pytest.raises(UnknownId) as unknown:
        resolve_id("9999", ids, **args)
    assert str(unknown.value) == (
        "no dead letter with id starting '9999'; `jobkit dead-letters list` shows them"
    )
    with pytest.raises(AmbiguousId, match="too short: give at least 4 characters"):
        resolve_id("abc", ids, **args)
    assert match_pattern("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\*"


def add_dead_letter(store: DeadLetterStore, dead_letter_id: str, **fields: Any) -> None:
    message = Message("default", "ping", (), {}, {}, message_id=dead_letter_id)
    record = {
        "reason": "retries_exhausted",
        "actor": "ping",
        "attempts": 3,
        "exc_type": "RuntimeError",
        "exc_message": "boom",
        "message": message_as_sent(message),
        **fields,
    }
    store.add(new_record(dead_letter_id=dead_letter_id, queue="default", **record))


@pytest.fixture
def three(real_broker: Broker) -> DeadLetterStore:
    """The real broker's store, holding dead letters ID_1, ID_2 and ID_3."""
    store = dead_letter_store(real_broker)
    for dead_letter_id in (ID_1, ID_2, ID_3):
        add_dead_letter(store, dead_letter_id)
    return store


def test_the_store_resolves_prefixes_with_a_scan(three: DeadLetterStore) -> None:
    assert three.resolve("f8f0") == ID_3
    assert three.resolve(ID_1) == ID_1
    assert three.resolve_all(["abcd2", ID_3, "abcd2"]) == [ID_2, ID_3]
    with pytest.raises(AmbiguousId, match="^2 dead letters"):
        three.resolve("abcd")
    with pytest.raises(UnknownId):
        three.resolve("abc?")  # a glob character is a character, not a wildcard


def cli(kind: str, *args: str) -> Any:
    return run_jobkit(*args, env=child_env(url_for(kind), **env_for(kind)))


@pytest.mark.parametrize("action", ["show", "replay", "purge"])
def test_an_id_may_be_any_unique_prefix(
    three: DeadLetterStore, real_broker_kind: str, action: str
) -> None:
    result = cli(real_broker_kind, "dead-letters", action, "f8f0ae8f", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    if action == "show":
        assert report["id"] == ID_3
    elif action == "replay":
        assert list(report["replayed"]) == [ID_3]
        assert three.get(ID_3) is None and three.count() == 2
    else:
        assert report == {"purged": 1} and three.get(ID_3) is None and three.count() == 2


@pytest.mark.parametrize("action", ["show", "replay", "purge"])
@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("abcd", "2 dead letters have ids starting 'abcd' ("),
        ("9999", "no dead letter with id starting '9999'; `jobkit dead-letters list` shows them"),
    ],
    ids=["ambiguous", "unknown"],
)
def test_an_ambiguous_or_unknown_id_is_one_line_exit_1_and_nothing_done(
    three: DeadLetterStore, real_broker_kind: str, action: str, prefix: str, expected: str
) -> None:
    # With a good id before it: ids are resolved first, so nothing is replayed or purged.
    ids = [prefix] if action == "show" else [ID_3, prefix]
    result = cli(real_broker_kind, "dead-letters", action, *ids)
    assert result.returncode == exit_codes.ERROR, result.stderr
    assert expected in one_error_line(result)
    assert result.stdout == ""
    assert three.count() == 3


# ---------------------------------------------------------------- tables and --json


def list_at_width(broker: Broker, kind: str, columns: int) -> tuple[str, dict[str, str]]:
    """``dead-letters list`` of three dead letters with long errors, ``columns`` wide."""
    store = dead_letter_store(broker)
    for dead_letter_id in (ID_1, ID_2, ID_3):
        add_dead_letter(store, dead_letter_id, exc_message="a long explanation " * 5)
    env = child_env(url_for(kind), **env_for(kind), COLUMNS=str(columns))
    listed = run_jobkit("dead-letters", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert max(len(line) for line in listed.stdout.splitlines()) <= columns, listed.stdout
    return listed.stdout, env


def test_a_table_shows_ids_whole_at_120_columns(real_broker: Broker, real_broker_kind: str) -> None:
    stdout, _ = list_at_width(real_broker, real_broker_kind, 120)
    for dead_letter_id in (ID_1, ID_2, ID_3):
        assert dead_letter_id in stdout, stdout


def test_at_80_columns_ids_shrink_to_prefixes_that_commands_take(
    real_broker: Broker, real_broker_kind: str
) -> None:
    stdout, env = list_at_width(real_broker, real_broker_kind, 80)
    lines = stdout.splitlines()[3:]  # after the title, the header and the rule
    # A row's first line starts with its id; the lines a long error wraps onto do not.
    shown_ids = [line.split()[0] for line in lines if line[:2].strip()]
    assert len(shown_ids) == 3, stdout
    for shown in shown_ids:
        assert len(shown) == SHORT_ID and "…" not in shown
        result = run_jobkit("dead-letters", "show", shown, "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["id"].startswith(shown)


def test_at_80_columns_no_count_or_header_of_queues_is_cut(
    real_broker: Broker, real_broker_kind: str
) -> None:
    env = child_env(url_for(real_broker_kind), **env_for(real_broker_kind), COLUMNS="80")
    result = run_jobkit("queues", env=env)
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout, result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    for column in ("ready", "critical", "low", "delayed", "dead-lettered"):
        assert column in result.stdout


def test_an_empty_listing_is_one_line_or_an_empty_json_array(
    real_broker: Broker, real_broker_kind: str
) -> None:
    def check(filters: list[str], line: str) -> None:
        shown = cli(real_broker_kind, "dead-letters", "list", *filters)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout == f"{line}\n"
        as_json = cli(real_broker_kind, "dead-letters", "list", "--json", *filters)
        assert as_json.returncode == 0, as_json.stderr
        assert json.loads(as_json.stdout) == []

    store = dead_letter_store(real_broker)
    add_dead_letter(store, ID_1)
    check(["--reason", "crash_loop"], "no dead letters match")
    store.remove([ID_1])
    check([], "no dead letters")


def test_print_table_says_one_line_when_there_are_no_rows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    output.print_table("queues", ("queue", "ready"), [], empty="no queues")
    assert capsys.readouterr().out == "no queues\n"
    output.print_listing(
        [], as_json=True, title="t", columns=("a",), row=lambda item: (item,), empty="none"
    )
    assert capsys.readouterr().out == "[]\n"


def test_every_reason_a_dead_letter_can_carry_is_a_filter_choice() -> None:
    from brokers.decoding import ForgedMessage, OversizedMessage, UndecodableMessage
    from middleware import crash_loops, outcomes, rate_limits

    found = {OversizedMessage.reason, UndecodableMessage.reason, ForgedMessage.reason}
    found |= {crash_loops.CRASH_LOOP, rate_limits.LIMITS_UNAVAILABLE, "rate_limited"}
    source = Path(outcomes.__file__).read_text().split("def dead_letter_reason", 1)[1]
    found |= set(re.findall(r'return "(\w+)"', source.split("\ndef ", 1)[0]))
    assert found <= set(REASONS), found - set(REASONS)


# ---------------------------------------------------------------- send --delay


def test_a_delayed_send_names_the_actor_s_queue_and_when_it_is_due(
    real_broker: Broker, real_broker_kind: str
) -> None:
    result = cli(real_broker_kind, "send", "ping", "--delay", "10m")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        r"sent ping to queue 'default', due at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d "
        r"\(message id [0-9a-f-]{36}\)\n",
        result.stdout,
    ), result.stdout
    assert ".DQ" not in result.stdout
    result = cli(real_broker_kind, "send", "ping", "--delay", "600000", "--json")
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)
    assert message["queue_name"] == "default" and message["options"]["eta"] > 0
    (depth,) = [d for d in queue_depths(real_broker, {"default"}) if d.queue == "default"]
    assert depth.delayed == 2 and depth.ready == 0


def test_an_undelayed_send_says_no_due_time(real_broker: Broker, real_broker_kind: str) -> None:
    result = cli(real_broker_kind, "send", "ping", "--delay", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent ping to queue 'default' (message id ")


# ---------------------------------------------------------------- help lists the environment


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["demo"],
        ["worker"],
        ["queues"],
        ["stats"],
        ["send"],
        ["jobs", "cancel"],
        ["dead-letters", "list"],
        ["dead-letters", "show"],
        ["dead-letters", "replay"],
        ["embedded", "status"],
    ],
    ids=lambda c: " ".join(c) or "jobkit",
)
def test_help_lists_the_variables_the_command_reads(command: list[str]) -> None:
    result = run_jobkit(*command, "--help", env=child_env(EMBEDDED_URL))
    assert result.returncode == 0, result.stderr
    environment = result.stdout.split("\nenvironment:\n", 1)[1]
    fields = list(READS[command[0] if command else ""]) + list(READS.get(" ".join(command), ()))
    assert fields
    for field in fields:
        variable = env_names(field)[0]
        assert re.search(rf"^  {variable} ", environment, re.M), (variable, environment)
    listed = set(re.findall(r"^  (JOBKIT_\w+) ", environment, re.M))
    known = {env_names(name)[0] for name in Settings.model_fields}
    assert listed <= known


def test_every_command_says_what_it_reads() -> None:
    paths = {path.removeprefix("jobkit").strip() for path, _ in _parsers(build_parser())}
    assert {path.split(" ")[0] for path in paths} <= set(READS)
