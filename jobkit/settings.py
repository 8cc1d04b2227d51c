"""jobkit's settings: every ``JOBKIT_*`` variable, with its type, default, doc and check.

:func:`current` is this process's settings, read once; :func:`load_settings` reads a
given mapping (tests); :func:`reload` reads the environment again. A value that cannot
be used raises :class:`~jobkit.errors.SettingsError`, one line naming the variable and
its value (secrets masked), never a pydantic traceback. A blank variable means its
default, as it always has.

The configuration page's table is generated from here:
``python -m jobkit.settings --write docs/configuration.md``.

A leaf: it imports nothing of the project but ``jobkit.errors``.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from email import errors as email_errors
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, parse_qs, urlsplit

from pydantic import BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from jobkit.errors import SettingsError

PREFIX = "JOBKIT_"
#: ``JOBKIT_CRON_<ACTOR>``: a family, one variable per periodic actor.
CRON_PREFIX = "JOBKIT_CRON_"
#: Read by the test and benchmark suites only: not settings of the product.
TEST_ONLY = ("JOBKIT_TEST_", "JOBKIT_BENCH_", "JOBKIT_FAULTS_", "JOBKIT_CONFORMANCE_")
TEST_ONLY_NAMES = ("JOBKIT_SERVICES_WAIT_S",)
#: The generated section of the configuration page.
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"

#: ``middleware.priorities.LEVELS`` and its default weights (a leaf cannot import them).
LEVELS = ("critical", "high", "normal", "low")
DEFAULT_WEIGHTS = {"critical": 8, "high": 4, "normal": 2, "low": 1}
DEFAULT_REDACT = (
    "password,passwd,pwd,secret,token,authorization,auth,api_key,apikey,access_key,"
    "private_key,credential,cookie,session,signature"
)

# ---------------------------------------------------------------- parsers
# Each takes the variable's stripped text and returns the value, or raises ValueError
# saying what is accepted (without the value: the caller shows it, masked if secret).


def _parser(parse: Callable[[str], Any]) -> BeforeValidator:
    """Parse environment text with ``parse``; typed values (keyword arguments) pass as they are."""
    return BeforeValidator(lambda value: parse(value.strip()) if isinstance(value, str) else value)


def _whole(minimum: int, accepted: str, maximum: int | None = None) -> BeforeValidator:
    def parse(text: str) -> int:
        try:
            value = int(text)  # also "1_000", as the scraper's limit has always allowed
        except ValueError:
            raise ValueError(accepted) from None
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(accepted)
        return value

    return _parser(parse)


def _positive(accepted: str, maximum: float = math.inf) -> BeforeValidator:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(accepted) from None
        if not (0 < value <= maximum and math.isfinite(value)):
            raise ValueError(accepted)
        return value

    return _parser(parse)


def _choice(options: tuple[str, ...], accepted: str) -> BeforeValidator:
    def parse(text: str) -> str:
        if text.lower() not in options:
            raise ValueError(accepted)
        return text.lower()

    return _parser(parse)


def _check(test: Callable[[str], bool], accepted: str) -> BeforeValidator:
    def parse(text: str) -> str:
        if not test(text):
            raise ValueError(accepted)
        return text

    return _parser(parse)


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "on", "true", "yes"):
        return True
    if lowered in ("0", "off", "false", "no"):
        return False
    raise ValueError("use on or off (or 1/0, true/false, yes/no)")


_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
DURATION_ACCEPTED = "not a duration; use e.g. 30s, 15m, 12h, 7d, 2w or milliseconds"


def parse_duration_ms(text: str) -> int:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w`` or plain milliseconds -> milliseconds."""
    raw = text.strip().lower()
    for unit in sorted(_UNITS, key=len, reverse=True):
        number = raw.removesuffix(unit)
        if number != raw and number.replace(".", "", 1).isdigit():
            return int(float(number) * _UNITS[unit])
    if raw.isdigit():
        return int(raw)
    raise ValueError(DURATION_ACCEPTED)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip().lower() for name in text.split(",") if name.strip())


def _keys(text: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    if not keys:
        raise ValueError("set but holds no key; give one key, or several separated by commas")
    if any(len(key) < 16 for key in keys):
        raise ValueError("every key needs at least 16 characters (keys are comma-separated)")
    return keys


def _weights(text: str) -> dict[str, int]:
    weights = dict(DEFAULT_WEIGHTS)
    for part in text.split(","):
        name, _, number = part.partition("=")
        name = name.strip().lower()
        if name not in weights or not number.strip().isdigit() or int(number) < 1:
            raise ValueError(
                "write level=weight pairs with positive integer weights, e.g. "
                f"critical=8,high=4,normal=2,low=1 (levels: {', '.join(LEVELS)})"
            )
        weights[name] = int(number)
    return weights


def _level(text: str) -> str:
    if text.upper() not in logging.getLevelNamesMapping():
        raise ValueError("a log level: DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return text.upper()


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.I)


def _is_rate(text: str) -> bool:
    match = _RATE.match(text)
    return match is not None and float(match.group(1)) > 0


def _is_mailbox(text: str) -> bool:
    """One mailbox, as the email job's sender check wants it."""
    name, addr_spec = parseaddr(text)
    if "," in text or "@" not in addr_spec:
        return False
    try:
        Address(display_name=name, addr_spec=addr_spec)
    except (email_errors.HeaderParseError, email_errors.MessageDefect):
        return False
    return True


_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")
_HOOK_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

# ---------------------------------------------------------------- URLs
# A URL in an error is shown as the user typed it, only its password masked, and with the
# URL they most likely meant when the scheme is missing or misspelt.

_QUERY_SECRET = re.compile(r"(?i)((?:password|passwd|pass|secret|token)=)[^&#]*")


def _userinfo_end(scheme: str, rest: str) -> int:
    """The index of the ``@`` that ends the userinfo of ``rest`` (a URL after ``scheme://``).

    -1 if it has none. A client's parser ends the authority at the first ``/``, ``?`` or
    ``#``; a password holding one of them unencoded ends it early and leaves its tail and
    the ``@`` further on, where a host never has one. So an ``@`` after the authority ends
    a userinfo too when the authority ends at ``?`` or ``#``, or holds a ``:`` that starts
    no port number, or when the URL is no web address (on the web, ``/@name`` paths are
    common; in a Redis or AMQP URL, never). Masking more is the safe side.
    """
    authority = re.split(r"[/?#]", rest)[0]
    if "@" in authority:
        return authority.rindex("@")
    path = re.split(r"[?#]", rest)[0]
    if rest[len(authority) : len(authority) + 1] in ("?", "#"):
        return rest.rfind("@")
    port = authority.rpartition(":")[2]
    not_a_port = ":" in authority and not authority.startswith("[") and not port.isdigit()
    if "@" in path and (not_a_port or scheme.lower() not in ("http", "https")):
        return path.rindex("@")
    return -1


def mask_url(url: str) -> str:
    """``url`` exactly as given, but any password replaced by ``***``.

    A password is the userinfo's part after ``:`` (all of a userinfo without ``:``, e.g. a
    token or a Sentry key) and the value of ``password=``, ``secret=``, ``token=`` and the
    like in the query string. Also for text that is not quite a URL (``user:pw@host``).
    """
    start = url.find("://") + 3 if "://" in url else 0
    head, rest = url[:start], url[start:]
    end = _userinfo_end(head.removesuffix("://"), rest)
    if end >= 0:
        user, colon, _ = rest[:end].partition(":")
        rest = (f"{user}:***" if colon else "***") + rest[end:]
    before, question, query = rest.partition("?")
    return head + before + question + _QUERY_SECRET.sub(r"\1***", query)


#: Names people write for a scheme jobkit knows by another.
_SCHEME_ALIASES = {"rabbitmq": "amqp", "rabbit": "amqp", "valkey": "redis", "valkeys": "rediss"}
_LEADING_WORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)(:?/*)(.*)", re.S)
_HOST_PORT = re.compile(r"(?:[^/?#@\s]*@)?(?:\[[^\]\s]*\]|[^/?#@:\[\]\s]+)(?::(\d+))?(?:[/?#]\S*)?")
_HOST_LIKE = re.compile(r"(?:[\w-]+\.[\w.-]+|localhost|\[[^\]]*\])(?::\d+)?|[\w-]+:\d+")


def _known_scheme(word: str, schemes: tuple[str, ...]) -> str | None:
    """The scheme of ``schemes`` that ``word`` names or misspells, if one is close enough."""
    word = word.lower()
    if word in schemes:
        return word
    if _SCHEME_ALIASES.get(word) in schemes:
        return _SCHEME_ALIASES[word]
    close = difflib.get_close_matches(word, schemes, n=1, cutoff=0.75)
    return close[0] if close else None


def _likely_url(
    text: str, schemes: tuple[str, ...], by_port: Callable[[str | None], str]
) -> str | None:
    """The URL ``text`` most likely meant, with a scheme in ``schemes``; None if unsure.

    A misspelt scheme (``reddis://``), a broken ``://`` (``redis//h``, ``redis:/h``), or no
    scheme at all (``localhost:6379``: ``by_port`` picks the scheme from the port).
    """
    if "://" in text:
        typed, rest = text.split("://", 1)
        scheme = _known_scheme(typed, schemes)
        return f"{scheme}://{rest}" if scheme and scheme != typed.lower() else None
    word = _LEADING_WORD.fullmatch(text)
    if word is not None:
        name, separator, rest = word.groups()
        scheme = _known_scheme(name, schemes)
        # "redis:6379" is the host named redis (docker compose), not a scheme.
        is_port = separator == ":" and re.match(r"\d+(?:[/?#]|$)", rest) is not None
        if scheme and separator and rest and not is_port:
            if scheme == "embedded":  # the rest is a directory: keep its leading "/"
                tail = (separator + rest).removeprefix(":")
                return f"embedded://{tail.removeprefix('//')}"
            return f"{scheme}://{rest}"
    if text.startswith("/"):
        if text.endswith(".sock") and "unix" in schemes:
            return f"unix://{text}"
        return f"embedded://{text}" if "embedded" in schemes else None
    host = _HOST_PORT.fullmatch(text)
    return f"{by_port(host.group(1))}://{text}" if host is not None else None


def _split_url(
    text: str,
    schemes: tuple[str, ...],
    problem: str,
    accepted: str,
    by_port: Callable[[str | None], str],
) -> SplitResult:
    """``text`` split, with a scheme in ``schemes``, a host and a valid port (or a unix path).

    Else ValueError: ``problem`` (or "no scheme"), the URL ``text`` most likely meant
    (masked: the caller shows the message as it is), and ``accepted``.
    """
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme not in schemes:
        problem = problem if scheme or "://" in text else "no scheme"
        likely = _likely_url(text, schemes, by_port)
        if likely is None:
            raise ValueError(f"{problem}; {accepted}")
        raise ValueError(f"{problem}; did you mean {mask_url(likely)!r}? ({accepted})")
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unclosed [IPv6 address
        raise ValueError(
            "invalid host; write a name, an IPv4 address or an IPv6 address in [brackets]"
        ) from None
    if scheme == "unix":
        if not parts.path:
            raise ValueError("no socket path; write it as unix:///absolute/path/to/redis.sock")
        return parts
    if not parts.hostname:
        # "redis:///127.0.0.1:6379": one slash too many puts the host in the path.
        first = parts.path.lstrip("/").split("/")[0]
        if _HOST_LIKE.fullmatch(first):
            likely = f"{text.split('://', 1)[0]}://{text.split('://', 1)[1].lstrip('/')}"
            raise ValueError(f"no host; did you mean {mask_url(likely)!r}?")
        raise ValueError(f"no host; write it as {scheme}://host:port/...")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("invalid port; use a number from 1 to 65535") from None
    return parts


def _check_redis_db(parts: SplitResult) -> None:
    db = parts.path.lstrip("/")
    if parts.scheme.lower() in ("redis", "rediss") and db and not db.isdigit():
        raise ValueError(f"invalid database {db!r}; use a number, e.g. redis://127.0.0.1:6379/0")


BROKER_ACCEPTED = (
    "redis://, rediss://, unix://, amqp://, amqps://, embedded://, or unset for embedded"
)
_BROKER_SCHEMES = ("redis", "rediss", "unix", "amqp", "amqps", "embedded")
_AMQP_PORTS = {"5672": "amqp", "5671": "amqps"}


def check_broker_url(text: str) -> str:
    """``text`` if it is a broker URL jobkit can use; else ValueError saying what is accepted.

    ``brokers.urls.parse_broker_url`` applies the same check to a URL given in code.
    """
    if text.partition("://")[0].lower() == "embedded" and "://" in text:
        return text  # the rest is the server's directory
    parts = _split_url(
        text,
        _BROKER_SCHEMES,
        "unsupported scheme",
        f"use one of {BROKER_ACCEPTED}",
        lambda port: _AMQP_PORTS.get(port or "", "redis"),
    )
    _check_redis_db(parts)
    return text


def _state_url(text: str) -> str:
    schemes = ("redis", "rediss", "unix")
    accepted = "use redis://, rediss:// or unix://"
    _check_redis_db(_split_url(text, schemes, "not a Redis URL", accepted, lambda _: "redis"))
    return text


def check_http_url(text: str, problem: str, accepted: str, likely: str = "https") -> str:
    """``text`` if it is an http(s) URL with a host; else ValueError: ``problem``, the
    URL it likely meant (scheme ``likely``), ``accepted``. Also for URLs given on the
    command line (``jobkit stats --url``)."""
    _split_url(text, ("http", "https"), problem, accepted, lambda _: likely)
    return text


def _http_url(problem: str, accepted: str) -> BeforeValidator:
    return _parser(lambda text: check_http_url(text, problem, accepted))


def _smtp_url(text: str) -> str:
    accepted = "write smtp://[user:password@]host[:port] or smtps://..."
    parts = _split_url(
        text,
        ("smtp", "smtps"),
        "not an SMTP URL",
        accepted,
        lambda port: "smtps" if port == "465" else "smtp",
    )
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    if query.get("starttls", "auto") not in ("auto", "require", "off"):
        raise ValueError("starttls must be auto, require or off")
    try:
        timeout = float(query.get("timeout", 30))
    except ValueError:
        timeout = -1
    if not 0 < timeout < math.inf:
        raise ValueError("timeout must be a positive number of seconds")
    return text


CRON_ACCEPTED = (
    "write a cron line of 5 fields (minute hour day-of-month month day-of-week, "
    "e.g. '30 5 * * 1-5'), a name such as @daily, or off"
)
_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 7),
)


def check_cron(text: str) -> str:
    """``text`` if periodiq can schedule it (or ``off``); ValueError saying what is accepted."""
    text = text.strip()
    if text.lower() == "off":
        return "off"
    # periodiq's own parser, the one that schedules; imported here because it imports Dramatiq.
    from periodiq import CronSpec

    if not text.startswith("@") and len(text.split()) != 5:
        raise ValueError(CRON_ACCEPTED)  # periodiq would ignore a 6th field, or crash on 4
    try:
        spec = CronSpec.parse(text)
    except (KeyError, IndexError, ValueError):
        raise ValueError(CRON_ACCEPTED) from None
    for (what, low, high), values in zip(_CRON_FIELDS, spec.astuple(), strict=True):
        # periodiq does not check ranges: a minute of 60 would never fire.
        if values[0] < low or values[-1] > high:
            raise ValueError(f"{what} out of range ({low}-{high}); {CRON_ACCEPTED}")
    return text


def _cron_keys(value: Any) -> Any:
    """Actor names in lower case, as Dramatiq spells them."""
    return {str(k).lower(): v for k, v in value.items()} if isinstance(value, Mapping) else value


# ---------------------------------------------------------------- the table


def _setting(
    default: Any = None,
    doc: str = "",
    *,
    group: str,
    shown: str | None = None,
    secret: Literal["url", "key"] | None = None,
    env: tuple[str, ...] = (),
    family: str | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A field with its doc, its table group and how it is read and shown."""
    extra: dict[str, Any] = {"group": group}
    for key, value in (("shown", shown), ("secret", secret), ("family", family)):
        if value is not None:
            extra[key] = value
    if env:
        extra["env"] = list(env)
    if factory is not None:
        return Field(
            default_factory=factory, description=doc, json_schema_extra=extra, repr=not secret
        )
    return Field(default, description=doc, json_schema_extra=extra, repr=not secret)


BROKER, MESSAGES, PRIORITIES, STATE = "Broker", "Messages", "Priorities", "State and limits"
DEAD, PERIODIC, THROTTLE, LOGS = "Dead letters", "Periodic jobs", "Load throttling", "Logs"
SENTRY, METRICS, EMAILS = "Sentry", "Metrics", "Jobs: emails"
RECORDS = "Job records"
IMAGES, SCRAPING = "Jobs: images", "Jobs: scraping"

MODES, FORMATS = ("strict", "weighted"), ("json", "console")
MODE_ACCEPTED = "not a priority mode; use strict (default) or weighted"
FORMAT_ACCEPTED = "not a log format; use json or console"
HEARTBEAT_ACCEPTED = "milliseconds, at least 1000 (a busy worker must not look dead)"
APP_ACCEPTED = "an importable module, or module:attribute naming its broker, e.g. shop.jobs"
HOOK_ACCEPTED = "write module:function, e.g. myapp.alerts:on_dead_letter"
MEMORY_ACCEPTED = "must be a positive percentage up to 100, e.g. 90"
MAILBOX_ACCEPTED = "one address, e.g. jobkit@example.com or Jobkit <jobkit@example.com>"
AGENT_ACCEPTED = "printable text on one line, e.g. acme-bot/2"
WEBHOOK_ACCEPTED = ("not an http(s) URL", "write http(s)://host/path")
DSN_ACCEPTED = ("not a Sentry DSN", "write https://<key>@<host>/<project>")

Flag = Annotated[bool, _parser(_flag)]
Rate = Annotated[str, _check(_is_rate, "write N/s, N/m or N/h with N > 0, e.g. '20/s'")]
PositiveInt = Annotated[int, _whole(1, "must be a positive whole number")]
_lower_keys = BeforeValidator(_cron_keys)


class Settings(BaseSettings):
    """Every setting jobkit reads from the environment (see the module docstring)."""

    # Defaults are not validated: "" and None mean unset, which the parsers never see.
    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=True,
        frozen=True,
        validate_default=False,
    )

    broker_url: Annotated[str, _parser(check_broker_url)] = _setting(
        "", "the broker: `redis://`, `rediss://`, `unix://`, `amqp://`, `amqps://` or "
        "`embedded://[DIR]`. See [Brokers](brokers.md)",
        group=BROKER, shown="unset: embedded server under `JOBKIT_HOME`", secret="url")  # fmt: skip
    home: Path = _setting(
        Path(".jobkit"), "data directory of the embedded server, and of `jobkit demo`'s "
        "files (`demo/`); relative paths resolve against the working directory",
        group=BROKER, shown="`./.jobkit`")  # fmt: skip
    app: Annotated[str, _check(_IMPORT_PATH.match, APP_ACCEPTED)] = _setting(
        "actors", "the app the `jobkit` commands load (`--app` wins): the module that "
        "declares your actors, or `module:attribute` naming its broker", group=BROKER)  # fmt: skip
    heartbeat_timeout_ms: Annotated[int, _whole(1000, HEARTBEAT_ACCEPTED)] = _setting(
        60_000, "Redis and embedded: how long a silent worker counts as alive before its "
        "unacked jobs go back to their queue, in ms (at least 1000). "
        "See [Redis](brokers.md#redis)", group=BROKER)  # fmt: skip

    max_message_bytes: Annotated[int, _whole(0, "a number of bytes is expected (0: no limit)")] = (
        _setting(1_048_576, "largest encoded message: a send over it fails, a consumer "
        "dead-letters one as `too_large`; `0`: no limit. "
        "See [Message rules](middleware/message-rules.md)",
        group=MESSAGES, shown="`1048576` (1 MiB)"))  # fmt: skip
    signing_key: Annotated[tuple[str, ...], _parser(_keys)] = _setting(
        (), "HMAC key(s), comma-separated, at least 16 characters each: the first signs, all "
        "verify (to rotate, put the new key first everywhere and drop the old one once its "
        "messages are gone); consumers dead-letter unsigned or forged messages as "
        "`bad_signature`. See [Message rules](middleware/message-rules.md)",
        group=MESSAGES, shown="unset (off)", secret="key")  # fmt: skip

    priority_mode: Annotated[Literal["strict", "weighted"], _choice(MODES, MODE_ACCEPTED)] = (
        _setting("strict", "`strict`: always the most urgent waiting job first; `weighted`: "
        "lower levels keep a share under constant urgent load (Redis and embedded only). "
        "See [Priorities](middleware/priorities.md)", group=PRIORITIES))  # fmt: skip
    priority_weights: Annotated[dict[str, int], _parser(_weights)] = _setting(
        doc="weighted mode: each level's weight, `level=weight` pairs (positive integers; "
        "levels left out keep their default)",
        group=PRIORITIES, factory=lambda: dict(DEFAULT_WEIGHTS))  # fmt: skip

    state_url: Annotated[str, _parser(_state_url)] = _setting(
        "", "Redis (`redis://`, `rediss://`, `unix://`) holding jobkit's state: rate-limit and "
        "concurrency state, periodic tick locks, crash counts, dead letters and job records. "
        "Unset: the broker's own Redis (Redis and embedded brokers); needed on RabbitMQ. See "
        "[Rate limits](middleware/rate-limits.md), [Dead letters](middleware/dead-letters.md), "
        "[Job records](middleware/job-records.md)",
        group=STATE, shown="unset: the broker's Redis", secret="url",
        env=("JOBKIT_STATE_URL", "JOBKIT_RATE_LIMIT_URL"))  # fmt: skip
    concurrency_lease_ms: Annotated[int, _whole(100, "milliseconds, at least 100")] = _setting(
        30_000, "lease of a concurrency slot, in ms: renewed every third of it while the job "
        "runs; a SIGKILLed worker's slot frees within it", group=STATE)  # fmt: skip
    max_crashes: Annotated[int, _whole(1, "a number of crashes >= 1 is expected")] = _setting(
        3, "a job whose worker died this many times in a row while holding it is "
        "dead-lettered (`crash_loop`). See [Crash loops](middleware/crash-loops.md)",
        group=STATE)  # fmt: skip

    dead_letter_ttl: Annotated[int, _parser(parse_duration_ms)] = _setting(
        7 * 86_400_000, "how long a dead letter is kept (`30s`, `15m`, `12h`, `7d`, `2w` or "
        "milliseconds; read as ms); `0` keeps them forever", group=DEAD, shown="`7d`")  # fmt: skip
    dead_letter_max: Annotated[int, _whole(0, "a whole number of records (0: unbounded)")] = (
        _setting(100_000, "most dead letters kept; past it the oldest are dropped, with a "
        "WARNING; `0` is unbounded", group=DEAD))  # fmt: skip
    dead_letter_traceback: Annotated[int, _whole(1, "a number of characters >= 1")] = _setting(
        8192, "characters of a failure's traceback kept in its dead letter: a longer one "
        "keeps its start and its end, where the error is, around `… [N characters cut] …`",
        group=DEAD)  # fmt: skip
    dead_letter_hook: Annotated[str, _check(_HOOK_PATH.match, HOOK_ACCEPTED)] = _setting(
        "", "`package.module:function` called with each dead letter (a dict) in the worker, "
        "after it is stored", group=DEAD)  # fmt: skip
    dead_letter_webhook: Annotated[str, _http_url(*WEBHOOK_ACCEPTED)] = _setting(
        "", "URL that gets each dead letter as a JSON POST (without the message's arguments "
        "or raw bytes), from a background thread, 5 s timeout, one attempt",
        group=DEAD, secret="url")  # fmt: skip

    job_records: Flag = _setting(
        True, "keep a record of every job (state, attempts, result, progress) in the state "
        "Redis, for `jobkit jobs` and the Python API; `0` turns records, cancelling and unique "
        "jobs off. See [Job records](middleware/job-records.md)", group=RECORDS)  # fmt: skip
    job_ttl: Annotated[int, _parser(parse_duration_ms)] = _setting(
        86_400_000, "how long a finished job's record is kept (`30s`, `15m`, `12h`, `7d` or "
        "milliseconds; `0` keeps them forever); unfinished jobs' records never expire",
        group=RECORDS,
        shown="`24h`")  # fmt: skip
    job_result_max_bytes: Annotated[int, _whole(0, "a number of bytes >= 0")] = _setting(
        65_536, "largest result kept in a record (JSON bytes); a larger one is not kept and "
        "waiting for it raises `ResultTooLarge`", group=RECORDS)  # fmt: skip
    cron: Annotated[dict[str, Annotated[str, _parser(check_cron)]], _lower_keys] = _setting(
        doc="a periodic job's schedule, by actor name in capitals (e.g. "
        "`JOBKIT_CRON_DAILY_SUMMARY`): a cron line of 5 fields or an `@daily`-style name, in "
        "the scheduler's local time, or `off` (the actor can still be sent by hand). "
        "See [Periodic jobs](job-library.md#periodic-jobs)", group=PERIODIC,
        shown="each periodic job's own", env=(f"{CRON_PREFIX}<ACTOR>",), family=CRON_PREFIX,
        factory=dict)  # fmt: skip
    periodic_skip_delay: Annotated[int, _whole(1, "a whole number of seconds >= 1")] = _setting(
        30, "seconds after its tick past which a periodic job is skipped instead of run",
        group=PERIODIC)  # fmt: skip
    report_dir: Path = _setting(
        Path(".jobkit/reports"), "where `daily_summary` writes `daily-<date>.json`",
        group=PERIODIC)  # fmt: skip

    throttle_load: Annotated[float | None, _positive("must be a positive number, e.g. 2.0")] = (
        _setting(None, "pause starting jobs while the 1-minute load average per CPU core is "
        "above this, e.g. `2.0`. See [Load-aware throttling](middleware/load-throttling.md)",
        group=THROTTLE, shown="unset (off)"))  # fmt: skip
    throttle_memory: Annotated[float | None, _positive(MEMORY_ACCEPTED, 100)] = _setting(
        None, "pause starting jobs while memory in use is above this percentage, e.g. `90`",
        group=THROTTLE, shown="unset (off)")  # fmt: skip
    throttle_interval_ms: Annotated[int, _whole(10, "must be a whole number >= 10")] = _setting(
        1000, "how often the throttle looks at the host, in ms", group=THROTTLE)  # fmt: skip

    log_format: Annotated[Literal["", "json", "console"], _choice(FORMATS, FORMAT_ACCEPTED)] = (
        _setting("", "worker log format, `json` or `console`; in other processes (app code, "
        "`periodiq`) jobkit formats logs only when this is set. "
        "See [Structured logs](middleware/structured-logs.md)",
        group=LOGS, shown="`json` off a terminal, `console` on one"))  # fmt: skip
    log_level: Annotated[str, _parser(_level)] = _setting(
        "", "root log level when jobkit configures logging (`DEBUG`, `INFO`, `WARNING`, "
        "`ERROR`)", group=LOGS,
        shown="the CLI's (`dramatiq -v` for DEBUG), at least `INFO`")  # fmt: skip
    log_redact: Annotated[tuple[str, ...], _parser(_names)] = _setting(
        tuple(DEFAULT_REDACT.split(",")), "argument names (comma-separated; substring, any "
        "case) whose values are logged as `[redacted]`", group=LOGS)  # fmt: skip
    log_max_value: Annotated[int, _whole(0, "a number of characters >= 0")] = _setting(
        200, "longest argument value logged, in characters", group=LOGS)  # fmt: skip

    sentry_dsn: Annotated[str, _http_url(*DSN_ACCEPTED)] = (
        _setting("", "sentry-sdk's own variable (no `JOBKIT_` prefix): report jobs that fail "
        "for good to Sentry. See [Sentry](middleware/sentry.md)",
        group=SENTRY, shown="unset (off)", secret="url", env=("SENTRY_DSN",)))  # fmt: skip
    sentry_report_retries: Flag = _setting(
        False, "`on`: also report each failure that a retry follows", group=SENTRY)  # fmt: skip
    sentry_send_args: Flag = _setting(
        False, "`on`: send job arguments (secrets still redacted)", group=SENTRY)  # fmt: skip

    metrics: Flag = _setting(
        True, "`off`: no metrics and no exporter. See [Metrics](middleware/metrics.md)",
        group=METRICS)  # fmt: skip
    metrics_host: str = _setting("127.0.0.1", "where the exporter listens", group=METRICS)
    metrics_port: Annotated[int, _whole(1, "a port number from 1 to 65535", 65535)] = _setting(
        9191, "exporter port (one per worker group; `jobkit stats` reads it too)",
        group=METRICS)  # fmt: skip
    metrics_dir: Path = _setting(
        doc="prometheus-client multiprocess files, one directory per worker group",
        group=METRICS, shown="`/tmp/jobkit-metrics-<uid>`",
        factory=lambda: Path(tempfile.gettempdir()) / f"jobkit-metrics-{os.getuid()}")  # fmt: skip

    smtp_url: Annotated[str, _parser(_smtp_url)] = _setting(
        "", "the email job's server: `smtp://user:password@host:587` (STARTTLS when offered; "
        "`?starttls=require` or `off`) or `smtps://host:465`; also `?timeout=S` and "
        "`?cafile=PATH`. Unset: emails go to `JOBKIT_EMAIL_OUTBOX`. "
        "See [Emails](job-library.md#emails)",
        group=EMAILS, shown="unset (outbox)", secret="url")  # fmt: skip
    email_outbox: Path = _setting(
        Path(".jobkit/outbox"), "where emails are written as `<Message-ID>.eml` files when "
        "`JOBKIT_SMTP_URL` is unset", group=EMAILS)  # fmt: skip
    email_from: Annotated[str, _check(_is_mailbox, MAILBOX_ACCEPTED)] = _setting(
        "jobkit@localhost", "the emails' sender unless a job names one", group=EMAILS)  # fmt: skip
    email_rate_limit: Rate = _setting(
        "10/s", "emails per recipient domain, `N/s`, `N/m` or `N/h` (read when the actor is "
        "declared)", group=EMAILS)  # fmt: skip

    image_max_bytes: PositiveInt = _setting(
        50 * 1024 * 1024, "largest source file the image jobs accept, in bytes. "
        "See [Images](job-library.md#images)",
        group=IMAGES, shown="`52428800` (50 MiB)")  # fmt: skip
    image_max_pixels: PositiveInt = _setting(
        50_000_000, "most pixels (width x height) accepted, in or out", group=IMAGES)  # fmt: skip

    scrape_user_agent: Annotated[str, _check(str.isprintable, AGENT_ACCEPTED)] = _setting(
        "jobkit-scraper/1", "sent with every request and matched against robots.txt. "
        "See [Scraping](job-library.md#scraping)", group=SCRAPING)  # fmt: skip
    scrape_max_bytes: Annotated[int, _whole(1, "a number of bytes > 0 is expected")] = _setting(
        5_000_000, "largest (decompressed) page body read, in bytes", group=SCRAPING)  # fmt: skip
    scrape_dir: Path = _setting(
        Path(".jobkit/scraped"), "where results go by default (relative to the working "
        "directory)", group=SCRAPING)  # fmt: skip
    scrape_rate_limit: Rate = _setting(
        "1/s", "requests per host, `N/s`, `N/m` or `N/h` (read when the actor is declared)",
        group=SCRAPING)  # fmt: skip

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # One reader instead of pydantic-settings' own: it knows the old name of the state
        # URL, the JOBKIT_CRON_* family, blank-means-unset, and reads load_settings' mapping.
        environ = _ENVIRON.get()
        return init_settings, _EnvironSource(
            settings_cls, os.environ if environ is None else environ
        )


# ---------------------------------------------------------------- reading

#: The mapping :func:`load_settings` was given (``None``: ``os.environ``).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("jobkit_environ", default=None)


def _meta(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _variables(name: str, field: FieldInfo) -> tuple[str, ...]:
    return tuple(_meta(field).get("env") or (PREFIX + name.upper(),))


def env_names(name: str) -> tuple[str, ...]:
    """The variables that set field ``name``; the first one set wins."""
    return _variables(name, Settings.model_fields[name])


def _given(environ: Mapping[str, str], name: str) -> str:
    """A variable's text, stripped; ``""`` if unset or blank (blank always meant the default)."""
    return (environ.get(name) or "").strip()


def _family(environ: Mapping[str, str], prefix: str) -> dict[str, str]:
    return {
        name[len(prefix) :].lower(): _given(environ, name)
        for name in sorted(environ)
        if name.startswith(prefix) and len(name) > len(prefix) and _given(environ, name)
    }


class _EnvironSource(PydanticBaseSettingsSource):
    """Each field's text from an environment mapping, by its variable name(s)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self().get(field_name), field_name, False  # unused: __call__ reads them all

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if prefix := _meta(field).get("family"):
                if members := _family(self.environ, prefix):
                    values[name] = members
                continue
            for variable in _variables(name, field):
                if text := _given(self.environ, variable):
                    values[name] = text
                    break
        return values


def _shown(text: str, secret: str | None) -> str:
    """``text`` as an error may show it: keys hidden, URLs without their password."""
    if secret == "key":
        return "***"
    return mask_url(text) if secret == "url" else text


def _describe(error: ValidationError, environ: Mapping[str, str]) -> str:
    """One line per bad variable, ``NAME='value': what is accepted``, joined with ``; ``."""
    lines: list[str] = []
    for item in error.errors(include_url=False):
        loc = item["loc"]
        field = Settings.model_fields.get(str(loc[0])) if loc else None
        if field is None:
            lines.append(item["msg"])
            continue
        meta = _meta(field)
        if (prefix := meta.get("family")) and len(loc) > 1:
            member = f"{prefix}{str(loc[1]).upper()}"
            variable = next((n for n in sorted(environ) if n.upper() == member), member)
        else:
            names = list(env_names(str(loc[0])))
            variable = next((n for n in names if _given(environ, n)), names[0])
        shown = _shown(_given(environ, variable), meta.get("secret"))
        cause = (item.get("ctx") or {}).get("error")
        reason = str(cause) if item["type"] == "value_error" and cause else item["msg"]
        lines.append(f"{variable}={shown!r}: {reason}")
    return "; ".join(dict.fromkeys(lines))


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings in ``environ`` (default: ``os.environ``); SettingsError if any is bad."""
    given = os.environ if environ is None else environ
    token = _ENVIRON.set(given)
    try:
        return Settings()
    except ValidationError as error:
        message = _describe(error, given)
    finally:
        _ENVIRON.reset(token)
    # Raised outside the except block: no chained ValidationError, which holds the raw values.
    raise SettingsError(message)


_current: Settings | None = None
_lock = threading.Lock()


def current() -> Settings:
    """This process's settings, read from the environment once."""
    global _current
    settings = _current
    if settings is not None:
        return settings
    with _lock:
        if _current is None:
            _current = load_settings()
        return _current


def forget() -> None:
    """Drop the settings read so far: the next :func:`current` reads the environment again.

    For tests that change the environment, and for a front that sets variables for
    itself before it loads the app (the demo).
    """
    global _current
    with _lock:
        _current = None


def reload() -> Settings:
    """Read the environment again now (:func:`forget`, then :func:`current`)."""
    forget()
    return current()


# ---------------------------------------------------------------- the docs table


def _shown_default(field: FieldInfo) -> str:
    meta = _meta(field)
    if "shown" in meta:
        return str(meta["shown"])
    value = field.get_default(call_default_factory=True)
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return "`on`" if value else "`off`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`"
    if isinstance(value, dict):
        return f"`{','.join(f'{k}={v}' for k, v in value.items())}`"
    return f"`{value}`"


def markdown_table() -> str:
    """The configuration reference: a table per area, one row per variable."""
    lines: list[str] = []
    group = None
    for name, field in Settings.model_fields.items():
        meta = _meta(field)
        if meta["group"] != group:
            group = meta["group"]
            lines += ["", f"## {group}", "", "| variable | default | meaning |", "|---|---|---|"]
        first, *older = env_names(name)
        variable = f"`{first}`" + "".join(f" (older name: `{n}`, still read)" for n in older)
        doc = (field.description or "").replace("|", "\\|")
        lines.append(f"| {variable} | {_shown_default(field)} | {doc} |")
    return "\n".join(lines[1:]) + "\n"


def generated_section(page: str) -> str:
    """What ``page`` holds between the settings markers (blank lines around it dropped)."""
    begin, end = page.find(BEGIN), page.find(END)
    if begin < 0 or end < begin:
        raise ValueError(f"the page has no {BEGIN} ... {END} section")
    return page[begin + len(BEGIN) : end].strip("\n") + "\n"


def replace_section(page: str, section: str) -> str:
    """``page`` with ``section`` between its settings markers."""
    generated_section(page)  # checks the markers
    begin, end = page.find(BEGIN) + len(BEGIN), page.find(END)
    # Blank lines around it: Markdown would read a line next to a comment as part of it.
    return f"{page[:begin]}\n\n{section.strip(chr(10))}\n\n{page[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobkit.settings",
        description="Print jobkit's configuration table (Markdown), or write it into a page.",
    )
    parser.add_argument(
        "--write",
        metavar="PAGE",
        type=Path,
        help=f"replace what PAGE holds between {BEGIN} and {END}",
    )
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(markdown_table())
        return 0
    args.write.write_text(replace_section(args.write.read_text(), markdown_table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
