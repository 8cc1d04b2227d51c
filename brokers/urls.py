"""Parse a broker URL (``JOBKIT_BROKER_URL``, ``--url``) into a broker spec."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from dramatiq import Broker

from jobkit.errors import BrokerConfigError
from jobkit.settings import Settings, current, mask_url

BROKER_URL_ENV = "JOBKIT_BROKER_URL"
HOME_ENV = "JOBKIT_HOME"

BrokerKind = Literal["redis", "rabbitmq", "embedded"]

SCHEMES: dict[str, BrokerKind] = {
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "embedded": "embedded",
}
ACCEPTED = "redis://, rediss://, unix://, amqp://, amqps://, embedded:// (or unset for embedded)"


@dataclass(frozen=True)
class BrokerSpec:
    """What ``JOBKIT_BROKER_URL`` asks for.

    ``url`` is the connection URL (with credentials) for redis and rabbitmq,
    and ``home`` the data directory of the embedded server.
    """

    kind: BrokerKind
    url: str = field(default="", repr=False)  # may hold credentials
    home: Path | None = None

    @property
    def display_url(self) -> str:
        if self.kind == "embedded":
            return f"embedded://{self.home}"
        return mask_url(self.url)


def parse_broker_url(value: str | None, *, env: str = BROKER_URL_ENV) -> BrokerSpec:
    """Turn a broker URL (``None`` or empty means embedded) into a :class:`BrokerSpec`.

    Raises :class:`BrokerConfigError` with one line naming ``env`` and the
    masked value when the URL cannot be used.
    """
    value = (value or "").strip()
    if not value:
        return BrokerSpec(kind="embedded", home=default_home())

    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    kind = SCHEMES.get(scheme)
    if kind is None:
        raise BrokerConfigError(
            f"{env}={mask_url(value)!r} has an unsupported scheme; use one of {ACCEPTED}"
        )
    if kind == "embedded":
        rest = value.split("://", 1)[1]
        home = Path(rest).expanduser().resolve() if rest else default_home()
        return BrokerSpec(kind="embedded", home=home)

    parts = urlsplit(value)
    if scheme == "unix":
        if not parts.path:
            raise BrokerConfigError(
                f"{env}={mask_url(value)!r} names no socket path; "
                "write it as unix:///absolute/path/to/redis.sock"
            )
    else:
        if not parts.hostname:
            raise BrokerConfigError(
                f"{env}={mask_url(value)!r} names no host; write it as {scheme}://host:port/..."
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise BrokerConfigError(
                f"{env}={mask_url(value)!r} has an invalid port; use a number from 1 to 65535"
            ) from None
    if kind == "redis" and scheme != "unix":
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise BrokerConfigError(
                f"{env}={mask_url(value)!r} has an invalid database {db!r}; "
                "use a number, e.g. redis://127.0.0.1:6379/0"
            )
    return BrokerSpec(kind=kind, url=value)


def default_home() -> Path:
    """The embedded server's data directory: ``JOBKIT_HOME`` (``./.jobkit``), made absolute."""
    return current().home.expanduser().resolve()


def configured_spec(settings: Settings | None = None) -> BrokerSpec:
    """The broker the settings name (``JOBKIT_BROKER_URL``; unset: embedded)."""
    return parse_broker_url((settings or current()).broker_url)


#: The spec each broker was built from (``build_broker`` fills it in).
SPECS: weakref.WeakKeyDictionary[Broker, BrokerSpec] = weakref.WeakKeyDictionary()


def spec_of(broker: Broker) -> BrokerSpec:
    """The spec a broker was built from (raises ``KeyError`` for brokers not built here)."""
    return SPECS[broker]
