"""jobkit's middleware stack.

:func:`build_stack` returns the middleware every jobkit broker gets, in
order. ``brokers.build_broker`` installs it before any actor is declared,
because Dramatiq validates actor options against the installed middleware at
declaration time.
"""

from __future__ import annotations

from dramatiq import Middleware
from dramatiq.middleware import default_middleware


def build_stack() -> list[Middleware]:
    """Fresh middleware instances for one broker: Dramatiq's defaults, then jobkit's."""
    return [middleware_class() for middleware_class in default_middleware]
