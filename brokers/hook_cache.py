"""Middleware hooks called only on the middleware that implement them.

Dramatiq's ``emit_before``/``emit_after`` call every middleware for every hook:
with jobkit's stack that is about a dozen no-op calls per hook, and a job goes
through seven hooks (bulk sends through two per message). This mixin keeps, per
hook, the bound methods of the middleware whose class overrides it, rebuilt
whenever the broker's middleware list changes; errors are handled as Dramatiq
handles them.
"""

from __future__ import annotations

from typing import Any, SupportsIndex

from dramatiq import Middleware
from dramatiq.middleware import MiddlewareError


def _implements(middleware: Middleware, hook: str) -> bool:
    return getattr(type(middleware), hook, None) is not getattr(Middleware, hook, None)


class _MiddlewareList(list):
    """The broker's middleware list: any change drops the hook cache.

    Dramatiq inserts into it (``add_middleware``) and programs may edit it in
    place; checking it against a copy on every hook cost more than the hooks.
    """

    def __init__(self, items: Any, on_change: Any) -> None:
        super().__init__(items)
        self._on_change = on_change

    @staticmethod
    def _changed(name: str) -> Any:  # builds the methods below
        def method(self: _MiddlewareList, *args: Any, **kwargs: Any) -> Any:
            result = getattr(list, name)(self, *args, **kwargs)
            self._on_change()
            return result

        method.__name__ = name
        return method

    __setitem__ = _changed("__setitem__")
    __delitem__ = _changed("__delitem__")
    __iadd__ = _changed("__iadd__")
    append = _changed("append")
    extend = _changed("extend")
    insert = _changed("insert")
    remove = _changed("remove")
    pop = _changed("pop")
    clear = _changed("clear")
    sort = _changed("sort")
    reverse = _changed("reverse")
    del _changed

    def __imul__(self, count: SupportsIndex) -> _MiddlewareList:
        super().__imul__(count)
        self._on_change()
        return self


class CachedHooks:
    """Mixin for a Dramatiq ``Broker`` subclass (put it first among the bases)."""

    logger: Any

    @property
    def middleware(self) -> list[Middleware]:
        return self.__dict__["_middleware"]

    @middleware.setter
    def middleware(self, items: list[Middleware]) -> None:
        self.__dict__["_middleware"] = _MiddlewareList(items, self._drop_hook_cache)
        self._drop_hook_cache()

    def _drop_hook_cache(self) -> None:
        self.__dict__["_hook_cache"] = {}

    def _implementers(self, hook: str) -> list[Any]:
        """Bound ``hook`` methods of the middleware that override it, in stack order."""
        cache = self.__dict__["_hook_cache"]
        found = cache.get(hook)
        if found is None:
            implementers = [m for m in self.middleware if _implements(m, hook)]
            found = cache[hook] = [getattr(m, hook) for m in implementers]
        return found

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        for method in self._implementers("before_" + signal):
            try:
                method(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.",
                    method.__name__,
                    method.__self__,
                    exc_info=True,
                )

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        for method in reversed(self._implementers("after_" + signal)):
            try:
                method(self, *args, **kwargs)
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.",
                    method.__name__,
                    method.__self__,
                    exc_info=True,
                )
