"""Parse ``JOBKIT_BROKER_URL`` into a broker spec, and mask credentials for display."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from jobkit.errors import BrokerConfigError

BROKER_URL_ENV = "JOBKIT_BROKER_URL"
HOME_ENV = "JOBKIT_HOME"
DEFAULT_HOME = ".jobkit"

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


def mask_url(url: str) -> str:
    """Return ``url`` with any password (in userinfo or query string) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//[^/@]*@", "//***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostinfo}" if ":" in userinfo else f"***@{hostinfo}"
        if not user:
            netloc = f":***@{hostinfo}"
    query = re.sub(r"(?i)(password|passwd|pass|secret|token)=[^&]*", r"\1=***", parts.query)
    # Not urlunsplit: it drops the "//" of an empty netloc (unix:///path).
    text = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        text += f"?{query}"
    if parts.fragment:
        text += f"#{parts.fragment}"
    return text


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
    """The embedded server's data directory: ``$JOBKIT_HOME`` or ``./.jobkit``."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()


def spec_from_env() -> BrokerSpec:
    return parse_broker_url(os.environ.get(BROKER_URL_ENV))
