"""Parse a broker URL (``JOBKIT_BROKER_URL``, ``--url``) into a broker spec."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dramatiq import Broker

from jobkit.errors import BrokerConfigError
from jobkit.settings import Settings, check_broker_url, current, mask_url

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

    try:
        check_broker_url(value)
    except ValueError as error:
        raise BrokerConfigError(f"{env}={mask_url(value)!r}: {error}") from None
    kind = SCHEMES[value.partition("://")[0].lower()]
    if kind == "embedded":
        rest = value.split("://", 1)[1]
        home = Path(rest).expanduser().resolve() if rest else default_home()
        return BrokerSpec(kind="embedded", home=home)
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
