"""Making job data safe to log: secrets redacted, long values cut, control characters escaped."""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass
from typing import Any

from jobkit.settings import DEFAULT_REDACT, Settings

from .clipping import clip

DEFAULT_MAX_VALUE = 200
REDACTED = "[redacted]"
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


@functools.lru_cache(maxsize=1024)
def _signature(fn: Any) -> inspect.Signature:
    return inspect.signature(fn)


def escape_control(text: str) -> str:
    """``text`` with CR, LF, ESC and other control characters written as ``\\xNN``."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


@dataclass(frozen=True)
class Redactor:
    """Which argument names are secret (substring match, any case) and how long a value may be."""

    names: tuple[str, ...] = tuple(DEFAULT_REDACT.split(","))
    max_value: int = DEFAULT_MAX_VALUE

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        """``JOBKIT_LOG_REDACT`` and ``JOBKIT_LOG_MAX_VALUE``."""
        return cls(names=settings.log_redact, max_value=settings.log_max_value)

    def is_secret(self, name: str) -> bool:
        lowered = name.lower()
        return any(secret in lowered for secret in self.names)

    def value(self, value: Any) -> Any:
        """A loggable copy of ``value``: strings clipped to ``max_value``; containers walked."""
        if isinstance(value, str):
            return clip(value, self.max_value)
        if isinstance(value, dict):
            return {
                str(k): REDACTED if self.is_secret(str(k)) else self.value(v)
                for k, v in list(value.items())[:50]
            }
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value[:50]]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.value(repr(value))

    def arguments(self, fn: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
        """A job's arguments by parameter name, secrets redacted (positional ones too)."""
        if not args and not kwargs:
            return {}
        try:
            bound = _signature(fn).bind_partial(*args, **kwargs).arguments
        except (TypeError, ValueError):
            bound = {**{f"arg{i}": v for i, v in enumerate(args)}, **kwargs}
        return {
            name: REDACTED if self.is_secret(name) else self.value(value)
            for name, value in bound.items()
        }
