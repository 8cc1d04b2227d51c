"""The settings table (jobkit/settings.py): parsing, one-line errors, masked secrets, the docs.

Broker-free: every test reads a mapping given to ``load_settings``, or the
environment through ``monkeypatch``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from periodiq import cron

from jobkit.errors import BrokerConfigError, SettingsError
from jobkit.settings import (
    CRON_PREFIX,
    DEFAULT_WEIGHTS,
    TEST_ONLY,
    TEST_ONLY_NAMES,
    Settings,
    current,
    env_names,
    forget,
    generated_section,
    load_settings,
    markdown_table,
    parse_duration_ms,
    reload,
)

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("middleware", "brokers", "actors", "jobkit")
SECRET = "hunter2-Secret"


def refused(environ: dict[str, str]) -> str:
    """The message of the SettingsError ``environ`` raises, checked to be one bare line."""
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message
    # No chained ValidationError: it would carry the raw (secret) values into tracebacks.
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    return message


# ---------------------------------------------------------------- defaults and parsing


def test_defaults_load_from_an_empty_environment() -> None:
    settings = load_settings({})
    for name, field in Settings.model_fields.items():
        assert getattr(settings, name) == field.get_default(call_default_factory=True), name
    assert settings.broker_url == "" and settings.state_url == "" and settings.signing_key == ()
    assert settings.home == Path(".jobkit") and settings.app == "actors"
    assert settings.heartbeat_timeout_ms == 60_000 and settings.max_message_bytes == 1_048_576
    assert settings.priority_mode == "strict" and settings.priority_weights == DEFAULT_WEIGHTS
    assert settings.dead_letter_ttl == 7 * 86_400_000 and settings.dead_letter_max == 100_000
    assert settings.cron == {} and settings.periodic_skip_delay == 30
    assert settings.throttle_load is None and settings.throttle_interval_ms == 1000
    assert settings.log_format == "" and "password" in settings.log_redact
    assert settings.metrics is True and settings.sentry_send_args is False
    assert settings.metrics_dir.name == f"jobkit-metrics-{os.getuid()}"
    assert (settings.email_rate_limit, settings.scrape_rate_limit) == ("10/s", "1/s")


def test_blank_values_mean_the_default() -> None:
    settings = load_settings(
        {
            "JOBKIT_MAX_CRASHES": "",
            "JOBKIT_METRICS": "   ",
            "JOBKIT_LOG_REDACT": " ",
            "JOBKIT_CRON_DAILY_SUMMARY": "",
            "JOBKIT_EMAIL_RATE_LIMIT": "",
        }
    )
    assert settings.max_crashes == 3 and settings.metrics is True
    assert "password" in settings.log_redact
    assert settings.cron == {} and settings.email_rate_limit == "10/s"


def test_values_are_parsed_into_the_types_the_code_wants() -> None:
    key, old_key = "k" * 16, "an-older-key-of-20ch"
    settings = load_settings(
        {
            "JOBKIT_BROKER_URL": " redis://127.0.0.1:6379/3 ",
            "JOBKIT_HOME": "/srv/jobkit",
            "JOBKIT_SIGNING_KEY": f"{key}, {old_key},",
            "JOBKIT_PRIORITY_MODE": "Weighted",
            "JOBKIT_PRIORITY_WEIGHTS": "critical=10, LOW=2",
            "JOBKIT_DEAD_LETTER_TTL": "12h",
            "JOBKIT_SCRAPE_MAX_BYTES": "1_000",
            "JOBKIT_THROTTLE_LOAD": "2.5",
            "JOBKIT_LOG_FORMAT": "JSON",
            "JOBKIT_LOG_LEVEL": "debug",
            "JOBKIT_LOG_REDACT": "Password, pin ,",
            "JOBKIT_METRICS": "OFF",
            "JOBKIT_SENTRY_REPORT_RETRIES": "1",
            "JOBKIT_CRON_DAILY_SUMMARY": "30 5 * * 1-5",
            "JOBKIT_CRON_PURGE_OLD_DEAD_LETTERS": "off",
            "JOBKIT_SMTP_URL": "smtp://ada:pw@mail.example.com:587?starttls=require&timeout=10",
            "JOBKIT_EMAIL_FROM": "Jobkit <jobs@example.com>",
            "SENTRY_DSN": "https://abc@o1.ingest.sentry.io/2",
            "JOBKIT_UNKNOWN_THING": "ignored",
            "PATH": "/usr/bin",
        }
    )
    assert settings.broker_url == "redis://127.0.0.1:6379/3"
    assert settings.home == Path("/srv/jobkit")
    assert settings.signing_key == (key, old_key)
    assert settings.priority_mode == "weighted"
    assert settings.priority_weights == {"critical": 10, "high": 4, "normal": 2, "low": 2}
    assert settings.dead_letter_ttl == 12 * 3_600_000
    assert settings.scrape_max_bytes == 1000
    assert settings.throttle_load == 2.5 and settings.throttle_memory is None
    assert (settings.log_format, settings.log_level) == ("json", "DEBUG")
    assert settings.log_redact == ("password", "pin")
    assert settings.metrics is False and settings.sentry_report_retries is True
    assert settings.cron == {"daily_summary": "30 5 * * 1-5", "purge_old_dead_letters": "off"}
    assert settings.sentry_dsn.startswith("https://abc@")
    assert not hasattr(settings, "unknown_thing")


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("0", 0),
        ("5000", 5000),
        ("250ms", 250),
        ("90s", 90_000),
        ("15m", 900_000),
        ("1.5h", 5_400_000),
        ("12h", 43_200_000),
        ("7d", 604_800_000),
        ("7D", 604_800_000),
        ("2w", 1_209_600_000),
    ],
)
def test_durations_parse_to_milliseconds(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms
    assert load_settings({"JOBKIT_DEAD_LETTER_TTL": text}).dead_letter_ttl == ms


@pytest.mark.parametrize(
    ("text", "on"),
    [(t, True) for t in ("on", "1", "true", "yes", "ON", "True")]
    + [(t, False) for t in ("off", "0", "false", "no", "Off", "NO")],
)
def test_flags_accept_on_off_and_their_synonyms(text: str, on: bool) -> None:
    assert load_settings({"JOBKIT_METRICS": text}).metrics is on
    assert load_settings({"JOBKIT_SENTRY_SEND_ARGS": text}).sentry_send_args is on


def test_keyword_arguments_are_taken_as_typed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBKIT_MAX_CRASHES", "4")
    settings = Settings(metrics=False, signing_key=("x" * 16,))
    assert settings.metrics is False and settings.signing_key == ("x" * 16,)
    assert settings.max_crashes == 4  # Settings() alone reads os.environ


# ---------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("JOBKIT_MAX_MESSAGE_BYTES", "lots", "a number of bytes is expected (0: no limit)"),
        ("JOBKIT_MAX_MESSAGE_BYTES", "-1", "a number of bytes"),
        ("JOBKIT_HEARTBEAT_TIMEOUT_MS", "500", "at least 1000"),
        ("JOBKIT_HEARTBEAT_TIMEOUT_MS", "soon", "at least 1000"),
        ("JOBKIT_PRIORITY_MODE", "fair", "use strict (default) or weighted"),
        ("JOBKIT_PRIORITY_WEIGHTS", "critical=0", "level=weight pairs"),
        ("JOBKIT_PRIORITY_WEIGHTS", "urgent=3", "level=weight pairs"),
        ("JOBKIT_PRIORITY_WEIGHTS", "critical=x", "level=weight pairs"),
        ("JOBKIT_PRIORITY_WEIGHTS", "critical", "level=weight pairs"),
        ("JOBKIT_DEAD_LETTER_TTL", "7 days", "not a duration"),
        ("JOBKIT_DEAD_LETTER_TTL", "-1d", "not a duration"),
        ("JOBKIT_DEAD_LETTER_MAX", "many", "a whole number of records"),
        ("JOBKIT_DEAD_LETTER_TRACEBACK", "0", "a number of characters >= 1"),
        ("JOBKIT_DEAD_LETTER_HOOK", "alerts", "module:function"),
        ("JOBKIT_MAX_CRASHES", "0", "a number of crashes >= 1"),
        ("JOBKIT_PERIODIC_SKIP_DELAY", "soon", "seconds"),
        ("JOBKIT_CONCURRENCY_LEASE_MS", "0", "at least 100"),
        ("JOBKIT_LOG_FORMAT", "xml", "use json or console"),
        ("JOBKIT_LOG_LEVEL", "LOUD", "a log level"),
        ("JOBKIT_LOG_MAX_VALUE", "-1", "characters"),
        ("JOBKIT_METRICS", "maybe", "use on or off"),
        ("JOBKIT_METRICS_PORT", "70000", "from 1 to 65535"),
        ("JOBKIT_SENTRY_SEND_ARGS", "sure", "use on or off"),
        ("JOBKIT_THROTTLE_LOAD", "lots", "must be a positive number"),
        ("JOBKIT_THROTTLE_LOAD", "nan", "must be a positive number"),
        ("JOBKIT_THROTTLE_MEMORY", "150", "up to 100"),
        ("JOBKIT_THROTTLE_INTERVAL_MS", "5", "must be a whole number >= 10"),
        ("JOBKIT_EMAIL_RATE_LIMIT", "fast", "N/s, N/m or N/h"),
        ("JOBKIT_SCRAPE_RATE_LIMIT", "0/s", "N/s, N/m or N/h"),
        ("JOBKIT_EMAIL_FROM", "ada@example.com, bob@example.com", "one address"),
        ("JOBKIT_IMAGE_MAX_BYTES", "50MB", "must be a positive whole number"),
        ("JOBKIT_IMAGE_MAX_PIXELS", "0", "must be a positive whole number"),
        ("JOBKIT_SCRAPE_MAX_BYTES", "5MB", "a number of bytes > 0"),
        ("JOBKIT_SCRAPE_USER_AGENT", "bot\x1b[31m", "printable text"),
        ("JOBKIT_APP", "shop jobs", "an importable module"),
        ("JOBKIT_BROKER_URL", "ftp://host", "unsupported scheme; use one of redis://"),
        ("JOBKIT_BROKER_URL", "redis://:6379/0", "no host"),
        ("JOBKIT_BROKER_URL", "redis://h:99999/0", "invalid port"),
        ("JOBKIT_BROKER_URL", "redis://h:6379/abc", "invalid database 'abc'"),
        ("JOBKIT_BROKER_URL", "unix://", "no socket path"),
        ("JOBKIT_STATE_URL", "amqp://h:5672/", "not a Redis URL"),
        ("JOBKIT_DEAD_LETTER_WEBHOOK", "ftp://hooks.example.com/x", "http(s)://"),
        ("JOBKIT_SMTP_URL", "smtp://mail.example.com?starttls=maybe", "starttls must be"),
        ("JOBKIT_SMTP_URL", "mail.example.com", "smtp://"),
        ("SENTRY_DSN", "ftp://o1.ingest.sentry.io/2", "a Sentry DSN"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_and_the_value(
    name: str, value: str, accepted: str
) -> None:
    message = refused({name: value})
    # Shown as given, also a secret URL that is no URL (none of these holds a password).
    assert message.startswith(f"{name}={value!r}: "), message
    assert accepted in message, message


def test_a_settings_error_is_a_broker_config_error_and_a_value_error() -> None:
    with pytest.raises(BrokerConfigError):
        load_settings({"JOBKIT_MAX_CRASHES": "none"})
    with pytest.raises(ValueError):
        load_settings({"JOBKIT_MAX_CRASHES": "none"})


def test_several_bad_values_are_named_on_one_line() -> None:
    message = refused({"JOBKIT_PRIORITY_MODE": "fair", "JOBKIT_METRICS": "maybe"})
    assert message == (
        "JOBKIT_PRIORITY_MODE='fair': not a priority mode; use strict (default) or weighted; "
        "JOBKIT_METRICS='maybe': use on or off (or 1/0, true/false, yes/no)"
    )


@pytest.mark.parametrize(
    ("name", "value", "masked"),
    [
        ("JOBKIT_BROKER_URL", f"ftp://ada:{SECRET}@broker", "ftp://ada:***@broker"),
        ("JOBKIT_BROKER_URL", f"redis://ada:{SECRET}@h:6379/x", "redis://ada:***@h:6379/x"),
        ("JOBKIT_STATE_URL", f"http://:{SECRET}@h", "http://:***@h"),
        ("JOBKIT_RATE_LIMIT_URL", f"amqp://{SECRET}@h", "amqp://***@h"),
        ("JOBKIT_SMTP_URL", f"smtp://ada:{SECRET}@mail?starttls=no", "smtp://ada:***@mail"),
        ("JOBKIT_DEAD_LETTER_WEBHOOK", f"ftp://h/x?token={SECRET}", "ftp://h/x?token=***"),
        ("SENTRY_DSN", f"{SECRET}@o1.ingest.sentry.io/2", "'***@o1.ingest.sentry.io/2'"),
        ("JOBKIT_BROKER_URL", f"guest:{SECRET}@mq:5672/", "'amqp://guest:***@mq:5672/'"),
        ("JOBKIT_BROKER_URL", f"redis//:{SECRET}@h:6379/5", "'redis://:***@h:6379/5'"),
        ("JOBKIT_BROKER_URL", f"redis://:{SECRET[:4]}/{SECRET[4:]}@h/0", "redis://:***@h/0"),
        ("JOBKIT_BROKER_URL", f"redis://:{SECRET[:4]}?{SECRET[4:]}@h/0", "redis://:***@h/0"),
        ("JOBKIT_STATE_URL", f"unix://?db=1&password={SECRET}", "'unix://?db=1&password=***'"),
        ("JOBKIT_SIGNING_KEY", SECRET, "JOBKIT_SIGNING_KEY='***': every key needs at least 16"),
        ("JOBKIT_SIGNING_KEY", f"{SECRET}-long-enough, {SECRET[:8]}", "at least 16 characters"),
    ],
)
def test_secrets_never_appear_in_a_message(name: str, value: str, masked: str) -> None:
    message = refused({name: value})
    assert SECRET not in message and SECRET[:8] not in message and SECRET[4:] not in message
    assert message.startswith(f"{name}=") and masked in message


@pytest.mark.parametrize(
    ("name", "value", "likely"),
    [
        ("JOBKIT_BROKER_URL", "localhost:6379", "redis://localhost:6379"),
        ("JOBKIT_BROKER_URL", "redis//127.0.0.1:6379/5", "redis://127.0.0.1:6379/5"),
        ("JOBKIT_BROKER_URL", "redis:/127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ("JOBKIT_BROKER_URL", "redis:6379", "redis://redis:6379"),  # a host named redis
        ("JOBKIT_BROKER_URL", "127.0.0.1:5672", "amqp://127.0.0.1:5672"),
        ("JOBKIT_BROKER_URL", "reddis://h:6379", "redis://h:6379"),
        ("JOBKIT_BROKER_URL", "rabbitmq://mq/", "amqp://mq/"),
        ("JOBKIT_BROKER_URL", "redis:///127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("JOBKIT_BROKER_URL", "/run/redis/redis.sock", "unix:///run/redis/redis.sock"),
        ("JOBKIT_BROKER_URL", "embedded:/srv/jobkit", "embedded:///srv/jobkit"),
        ("JOBKIT_STATE_URL", "localhost:6379/2", "redis://localhost:6379/2"),
        ("JOBKIT_SMTP_URL", "mail.example.com:465", "smtps://mail.example.com:465"),
        ("JOBKIT_SMTP_URL", "smpt://mail.example.com", "smtp://mail.example.com"),
        ("JOBKIT_DEAD_LETTER_WEBHOOK", "hooks.example.com/dead", "https://hooks.example.com/dead"),
        ("SENTRY_DSN", "htps://key@o1.ingest.sentry.io/2", "https://***@o1.ingest.sentry.io/2"),
    ],
)
def test_a_bad_url_is_echoed_as_given_with_the_likely_fix(
    name: str, value: str, likely: str
) -> None:
    message = refused({name: value})
    assert message.startswith(f"{name}={value.replace('key@', '***@')!r}: "), message
    assert f"did you mean {likely!r}?" in message, message


@pytest.mark.parametrize("value", ["ftp://host", "http://127.0.0.1/", "hello world", "redis:"])
def test_no_fix_is_guessed_when_none_is_likely(value: str) -> None:
    message = refused({"JOBKIT_BROKER_URL": value})
    assert message.startswith(f"JOBKIT_BROKER_URL={value!r}: ") and "did you mean" not in message
    assert "use one of redis://, rediss://, unix://, amqp://, amqps://, embedded://" in message


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = load_settings(
        {
            "JOBKIT_SIGNING_KEY": f"{SECRET}-long-enough",
            "JOBKIT_SMTP_URL": f"smtp://ada:{SECRET}@mail.example.com",
            "JOBKIT_STATE_URL": f"redis://:{SECRET}@h:6379/0",
            "SENTRY_DSN": f"https://{SECRET}@o1.ingest.sentry.io/2",
        }
    )
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert settings.signing_key == (f"{SECRET}-long-enough",)


# ---------------------------------------------------------------- JOBKIT_CRON_<ACTOR>


@pytest.mark.parametrize(
    "line",
    [
        "* * * *",
        "0 6 * * * *",
        "61 * * * *",
        "0 25 * * *",
        "0 6 0 * *",
        "*/0 * * * *",
        "5-1 * * * *",
        "0 6 * * funday",
        "@sometimes",
        "daily",
    ],
)
def test_a_bad_cron_line_fails_in_one_line(line: str) -> None:
    message = refused({"JOBKIT_CRON_DAILY_SUMMARY": line})
    assert message.startswith(f"JOBKIT_CRON_DAILY_SUMMARY={line!r}: "), message
    assert "cron line of 5 fields" in message


@pytest.mark.parametrize(
    "line", ["30 5 * * 1-5", "*/15 * * * 0,6", "0 6 * * mon-fri", "0 0 1 1 *", "@daily"]
)
def test_cron_lines_periodiq_schedules_are_kept_as_written(line: str) -> None:
    settings = load_settings({"JOBKIT_CRON_DAILY_SUMMARY": f" {line} "})
    assert settings.cron == {"daily_summary": line}
    cron(line)  # and periodiq takes it


def test_cron_off_and_actor_names_in_any_case() -> None:
    settings = load_settings({"JOBKIT_CRON_Snapshot_Queue_Depths": "OFF"})
    assert settings.cron == {"snapshot_queue_depths": "off"}
    message = refused({"JOBKIT_CRON_Snapshot_Queue_Depths": "soon"})
    assert message.startswith("JOBKIT_CRON_Snapshot_Queue_Depths='soon': ")


# ---------------------------------------------------------------- the state URL's old name


def test_the_old_name_of_the_state_url_is_still_read() -> None:
    old = {"JOBKIT_RATE_LIMIT_URL": "redis://127.0.0.1:6379/2"}
    assert load_settings(old).state_url == "redis://127.0.0.1:6379/2"
    both = {**old, "JOBKIT_STATE_URL": "redis://127.0.0.1:6379/5"}
    assert load_settings(both).state_url == "redis://127.0.0.1:6379/5"
    blank_new = {**old, "JOBKIT_STATE_URL": "  "}
    assert load_settings(blank_new).state_url == "redis://127.0.0.1:6379/2"
    message = refused({"JOBKIT_RATE_LIMIT_URL": "amqp://h:5672/"})
    assert message.startswith("JOBKIT_RATE_LIMIT_URL='amqp://h:5672/': not a Redis URL")


# ---------------------------------------------------------------- current() and reload()


@pytest.fixture
def restore_current() -> Iterator[None]:
    """The next test reads the settings again (conftest also forgets them before each test)."""
    yield
    forget()


def test_current_is_read_once_and_reload_reads_again(
    restore_current: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBKIT_MAX_CRASHES", "5")
    first = reload()
    assert first.max_crashes == 5 and current() is first
    # setitem, not setenv: conftest makes setenv forget the settings, as a new process would.
    monkeypatch.setitem(os.environ, "JOBKIT_MAX_CRASHES", "7")
    assert current() is first and current().max_crashes == 5
    second = reload()
    assert second.max_crashes == 7 and current() is second


def test_a_failed_reload_leaves_no_stale_settings(
    restore_current: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    reload()
    monkeypatch.setenv("JOBKIT_MAX_CRASHES", "never")
    with pytest.raises(SettingsError, match="JOBKIT_MAX_CRASHES='never'"):
        reload()
    with pytest.raises(SettingsError, match="JOBKIT_MAX_CRASHES='never'"):
        current()


# ---------------------------------------------------------------- the docs


def test_the_configuration_page_holds_the_generated_table() -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    assert generated_section(page) == markdown_table(), (
        "docs/configuration.md is out of date with jobkit/settings.py; regenerate it with: "
        "python -m jobkit.settings --write docs/configuration.md"
    )


def test_the_table_has_one_row_per_variable_and_one_section_per_area() -> None:
    table = markdown_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        assert f"`{env_names(name)[0]}`" in table
        assert field.description and "\n" not in field.description, name
    headings = re.findall(r"^## (.+)$", table, re.M)
    assert len(headings) == len(set(headings)), "a group's fields must be declared together"


# ---------------------------------------------------------------- nothing left out


def _declared() -> set[str]:
    return {variable for name in Settings.model_fields for variable in env_names(name)}


def test_every_variable_the_product_reads_is_in_the_table() -> None:
    declared = _declared()
    prefixes = (CRON_PREFIX, *TEST_ONLY)
    found: dict[str, str] = {}
    for package in PRODUCT:
        for path in sorted((REPO / package).rglob("*.py")):
            for name in re.findall(r"JOBKIT_[A-Z0-9_]+", path.read_text()):
                found.setdefault(name, str(path.relative_to(REPO)))
    assert "JOBKIT_BROKER_URL" in found  # the scan sees the code
    missing = {
        name: where
        for name, where in found.items()
        if name not in declared
        and name not in TEST_ONLY_NAMES
        and not name.startswith(prefixes)
        # A prefix in prose ("JOBKIT_SCRAPE_*") is fine if it prefixes declared variables.
        and not (name.endswith("_") and any(d.startswith(name) for d in declared))
    }
    assert not missing, f"read by the product but not declared in jobkit/settings.py: {missing}"
