"""The app a front works on, loaded by import string: ``--app`` / ``JOBKIT_APP``.

The fronts (``jobkit send``, ``queues``, ``dead-letters``, ``worker``) never
import the shipped ``actors`` package themselves: they import the module the
user names, whose import builds a broker (``brokers.build_broker``) and declares
its actors, as ``dramatiq MODULE`` does. ``module:attribute`` names the broker
explicitly; a module alone uses its ``broker`` attribute, else Dramatiq's
global broker once the module is imported.
"""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType

import dramatiq
from dramatiq import Broker

from brokers import embedded
from jobkit.errors import JobkitError
from jobkit.settings import current

APP_ENV = "JOBKIT_APP"
DEFAULT_APP = "actors"


class AppNotFound(JobkitError, ImportError):
    """The module named by ``--app`` / ``JOBKIT_APP`` cannot be imported or has no broker."""


def app_name(given: str | None = None) -> str:
    """``given`` (``--app``), else ``$JOBKIT_APP``, else ``actors``."""
    return (given or current().app).strip()


def import_app(given: str | None = None) -> ModuleType:
    """Import the app's module (``--app`` without ``:broker``); :class:`AppNotFound` if missing."""
    name = app_name(given)
    module_name = name.partition(":")[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise AppNotFound(
                f"app {name!r} (--app or {APP_ENV}): no module named {error.name!r}; "
                "give an importable module that declares your actors, e.g. --app shop.jobs "
                "(run from the directory that holds it, or put it on PYTHONPATH)"
            ) from None
        raise


def load_app(given: str | None = None, *, attach_only: bool = False) -> Broker:
    """Import the app and return its broker; :class:`AppNotFound` in one line if it cannot.

    ``attach_only``: the caller only looks (``jobkit queues``, ``dead-letters list``), so an
    embedded broker that is not running is not started by the app's import; it fails in
    one line instead (:func:`brokers.embedded.attach_only`).
    """
    name = app_name(given)
    module_name, _, attribute = name.partition(":")
    with embedded.attach_only() if attach_only else contextlib.nullcontext():
        module = import_app(name)
    if attribute:
        broker = getattr(module, attribute, None)
        if not isinstance(broker, Broker):
            raise AppNotFound(
                f"app {name!r} (--app or {APP_ENV}): {module_name}.{attribute} is not a "
                f"Dramatiq broker; name the module's broker, e.g. {module_name}:broker"
            )
        return broker
    broker = getattr(module, "broker", None)
    return broker if isinstance(broker, Broker) else dramatiq.get_broker()
