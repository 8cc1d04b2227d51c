"""JOBKIT_BROKER_URL parsing, every accepted form and every error path."""

from pathlib import Path

import pytest

from brokers.urls import mask_url, parse_broker_url
from jobkit.errors import BrokerConfigError


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", "redis"),
        ("redis://:s3cret@127.0.0.1:6379", "redis"),
        ("rediss://user:pw@redis.example.com:6380/2", "redis"),
        ("unix:///var/run/redis/redis.sock", "redis"),
        ("unix:///var/run/redis/redis.sock?db=3", "redis"),
        ("amqp://guest:guest@127.0.0.1:5672/", "rabbitmq"),
        ("amqp://guest:guest@127.0.0.1:5672/%2F?heartbeat=10", "rabbitmq"),
        ("amqps://user:pw@mq.example.com:5671/prod", "rabbitmq"),
        ("REDIS://127.0.0.1:6379/0", "redis"),
    ],
)
def test_accepted_urls_keep_the_full_url(url: str, kind: str) -> None:
    spec = parse_broker_url(url)
    assert spec.kind == kind
    assert spec.url == url
    assert spec.home is None


@pytest.mark.parametrize("value", [None, "", "   "])
def test_unset_means_embedded_in_jobkit_home(
    value: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JOBKIT_HOME", str(tmp_path / "home"))
    spec = parse_broker_url(value)
    assert spec.kind == "embedded"
    assert spec.home == (tmp_path / "home").resolve()


def test_default_home_is_dot_jobkit_in_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("JOBKIT_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert parse_broker_url(None).home == tmp_path.resolve() / ".jobkit"


def test_embedded_with_and_without_a_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JOBKIT_HOME", str(tmp_path / "default"))
    assert parse_broker_url("embedded://").home == (tmp_path / "default").resolve()
    assert parse_broker_url(f"embedded://{tmp_path}/data").home == (tmp_path / "data").resolve()
    monkeypatch.chdir(tmp_path)
    assert parse_broker_url("embedded://rel/dir").home == (tmp_path / "rel" / "dir").resolve()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:hunter2@127.0.0.1/", "unsupported scheme"),
        ("ftp://127.0.0.1/", "unsupported scheme"),
        ("127.0.0.1:6379", "no scheme; did you mean 'redis://127.0.0.1:6379'?"),
        ("redis//127.0.0.1:6379", "no scheme; did you mean 'redis://127.0.0.1:6379'?"),
        ("guest:hunter2@127.0.0.1:5672/", "did you mean 'amqp://guest:***@127.0.0.1:5672/'?"),
        ("redis://", "no host"),
        ("amqp://:hunter2@/", "no host"),
        ("redis://127.0.0.1:99999/0", "invalid port"),
        ("amqp://guest:hunter2@127.0.0.1:notaport/", "invalid port"),
        ("redis://127.0.0.1:6379/zero", "invalid database"),
        ("unix://", "no socket path"),
    ],
)
def test_bad_urls_give_one_line_naming_the_variable_with_password_masked(
    url: str, expected: str
) -> None:
    with pytest.raises(BrokerConfigError) as caught:
        parse_broker_url(url)
    message = str(caught.value)
    assert expected in message
    assert message.startswith("JOBKIT_BROKER_URL=")
    assert "\n" not in message
    assert "hunter2" not in message
    if "scheme" in expected:
        for scheme in ("redis://", "rediss://", "unix://", "amqp://", "amqps://", "embedded://"):
            assert scheme in message


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://token@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("unix:///tmp/r.sock?password=pw&db=1", "unix:///tmp/r.sock?password=***&db=1"),
        # As given: no scheme added, none lower-cased; only the password goes.
        ("localhost:6379", "localhost:6379"),
        ("redis//127.0.0.1:6379/5", "redis//127.0.0.1:6379/5"),
        ("REDIS://:pw@h:6379", "REDIS://:***@h:6379"),
        ("guest:pw@mq:5672/", "guest:***@mq:5672/"),
        ("https://h/?auth_token=pw&page=2#top", "https://h/?auth_token=***&page=2#top"),
        (
            "https://social.example/@ada?to=bob@example.com",
            "https://social.example/@ada?to=bob@example.com",
        ),
        # A password with a raw "/" or "?" still goes (a parser would end the host there).
        ("redis://:p/w@h:6379/0", "redis://:***@h:6379/0"),
        ("amqp://guest:p?w@mq/", "amqp://guest:***@mq/"),
    ],
)
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_display_url_of_a_spec_is_masked() -> None:
    spec = parse_broker_url("amqps://svc:topsecret@mq.internal:5671/prod")
    assert "topsecret" not in spec.display_url
    assert "topsecret" not in repr(spec.display_url)


def test_repr_of_a_spec_never_shows_the_url_credentials() -> None:
    assert "topsecret" not in repr(parse_broker_url("redis://:topsecret@127.0.0.1:6379/0"))
