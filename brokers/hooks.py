"""Middleware hooks called only on the middleware that implement them.

Dramatiq's ``emit_before``/``emit_after`` call every middleware for every hook:
with jobkit's stack that is about a dozen no-op calls per hook, and a job goes
through seven hooks (bulk sends through two per message). This mixin keeps, per
hook, the middleware whose class overrides it, rebuilt whenever the broker's
middleware list changes; errors are handled as Dramatiq handles them.
"""

from __future__ import annotations

from typing import Any

from dramatiq import Middleware
from dramatiq.middleware import MiddlewareError


def _implements(middleware: Middleware, hook: str) -> bool:
    return getattr(type(middleware), hook, None) is not getattr(Middleware, hook, None)


class CachedHooks:
    """Mixin for a Dramatiq ``Broker`` subclass (put it first among the bases)."""

    middleware: list[Middleware]
    logger: Any

    def _implementers(self, hook: str) -> list[Middleware]:
        current = tuple(self.middleware)
        cache = self.__dict__.get("_hook_cache")
        if cache is None or cache[0] != current:
            cache = self.__dict__["_hook_cache"] = (current, {})
        found = cache[1].get(hook)
        if found is None:
            found = cache[1][hook] = [m for m in current if _implements(m, hook)]
        return found

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        hook = "before_" + signal
        for middleware in self._implementers(hook):
            try:
                getattr(middleware, hook)(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", hook, middleware, exc_info=True
                )

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        hook = "after_" + signal
        for middleware in reversed(self._implementers(hook)):
            try:
                getattr(middleware, hook)(self, *args, **kwargs)
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", hook, middleware, exc_info=True
                )
