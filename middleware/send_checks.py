"""Checks each job as it is sent: JSON arguments that fit its actor's signature.

Without it, a job that cannot run fails late and obscurely: an argument JSON
cannot carry (a set, a ``Decimal``, bytes, an object) raises a bare ``TypeError``
from the encoder after Dramatiq logs a CRITICAL "Unexpected failure" traceback;
arguments that do not fit the function are sent, fail on every retry in the
worker, and end as a dead letter. :class:`SendChecks` refuses both at ``send()``
with one :class:`BadArguments` line naming the actor and the argument.

- **JSON values.** What a job's arguments may be is what Dramatiq's JSON encoder
  writes: dicts, lists, tuples (they arrive as lists), ``str``, ``int``,
  ``float``, ``bool`` and ``None``, and subclasses of those (an ``IntEnum``
  arrives as its int). Dict keys may be ``str``, ``int``, ``float``, ``bool`` or
  ``None`` (they arrive as strings). Anything else is refused, on every broker:
  sets, bytes, ``Decimal``, datetimes, ``uuid.UUID``, a plain ``Enum``,
  dataclasses, objects.
- **Signature.** The arguments must bind to the actor's function (cached per
  actor), and each later step of a pipeline to its actor with the previous
  step's result as its last argument (unless ``pipe_ignore``).

Only fresh sends are checked (``outcomes.enqueue_kind`` is ``SENT``): a retry,
a deferral, a delayed job coming due and a dead-letter replay re-enqueue a
message that was already sent. A replay of a job whose actor has since changed
its signature is sent as it was, and fails in the worker as it would have.
A message naming an actor this process has not declared is checked for JSON
only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from dramatiq import Actor, Broker, Message, Middleware, get_encoder
from dramatiq.middleware import MiddlewareError

from jobkit.errors import JobkitError

from . import outcomes

#: What to pass instead, in every "cannot be sent as JSON" line.
JSON_HINT = (
    "pass lists, dicts, str, int, float, bool or None (a path, a URL or a row id "
    "rather than an object)"
)
#: Nesting past this is left to Dramatiq's encoder to judge (a cycle, or deep data).
_MAX_DEPTH = 100
_SCALARS = frozenset({str, int, float, bool, type(None)})
_KEY_TYPES = (str, int, float, bool, type(None))


class BadArguments(JobkitError, MiddlewareError, TypeError):
    """A job's arguments cannot be sent as JSON or do not fit its actor; it was not sent.

    A ``MiddlewareError`` so that Dramatiq lets it reach the caller of ``send()``
    instead of logging and swallowing it; a ``TypeError``, as Python raises for
    a call with the wrong arguments.
    """


def is_plain_json(value: Any, depth: int = 0) -> bool:
    """True when ``value`` is made of exactly dict (``str`` keys), list, tuple and JSON scalars.

    Such a value is written alike by every JSON encoder (orjson and Dramatiq's).
    False means "ask Dramatiq's encoder": it also takes subclasses and
    non-string keys.
    """
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth > _MAX_DEPTH:
        return False
    if kind is list or kind is tuple:
        for item in value:
            if type(item) not in _SCALARS and not is_plain_json(item, depth + 1):
                return False
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            if type(item) not in _SCALARS and not is_plain_json(item, depth + 1):
                return False
        return True
    return False


def encodes(value: Any) -> bool:
    """Whether Dramatiq's encoder writes ``value``."""
    if is_plain_json(value):
        return True
    try:
        get_encoder().encode(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def not_json_error(message: Message, fn: Callable[..., Any] | None = None) -> BadArguments:
    """The error for ``message``, some part of which Dramatiq's encoder refuses.

    Names the first argument (or option) it refuses, by position and, with the
    actor's function ``fn``, by parameter name, and what inside it is refused.
    """
    names = _positional_names(fn)
    # (what the part is, its parameter name or None, its value)
    parts: list[tuple[str, str | None, Any]] = [
        (f"argument {index + 1}", repr(names[index]) if index < len(names) else None, value)
        for index, value in enumerate(message.args)
    ]
    parts += [(f"argument {name!r}", None, value) for name, value in message.kwargs.items()]
    parts += [(f"option {name!r}", None, value) for name, value in message.options.items()]
    where = f"{message.actor_name}.send(...): "
    for subject, name, value in parts:
        if encodes(value):
            continue
        path, culprit, why = _refused_part(value)
        if not path:
            described = f"{subject} ({f'{name}, ' if name else ''}{_a(culprit)}) {why}"
        else:
            named = f"{subject} ({name})" if name else subject
            described = f"{named} holds {_a(culprit)} at {path}, which {why}"
        return BadArguments(f"{where}{described}; {JSON_HINT}")
    # Each part encodes alone but the message does not: name the message.
    return BadArguments(f"{where}the job cannot be sent as JSON; {JSON_HINT}")


def _refused_part(value: Any, path: str = "", depth: int = 0) -> tuple[str, Any, str]:
    """The path inside ``value`` (``['key'][0]``) to the first part JSON refuses, it, and why."""
    if depth > _MAX_DEPTH:
        return path, value, "is nested too deeply (or refers to itself) to be sent as JSON"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, _KEY_TYPES):
                kind = type(key).__name__
                why = f"has a key of type {kind} (JSON keys are str, int, float, bool or None)"
                return path, value, why
            if not encodes(item):
                return _refused_part(item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if not encodes(item):
                return _refused_part(item, f"{path}[{index}]", depth + 1)
    return path, value, "cannot be sent as JSON"


def _a(value: Any) -> str:
    name = type(value).__name__
    if name in ("bytes", "bytearray"):
        return name
    return f"{'an' if name[:1].lower() in 'aeio' else 'a'} {name}"


def _positional_names(fn: Callable[..., Any] | None) -> list[str]:
    signature = _signature(fn) if fn is not None else None
    if signature is None:
        return []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in signature.parameters.values() if p.kind in positional]


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # a callable Python cannot describe: not checked
        return None


class Shape:
    """An actor function's signature, with a fast yes for arguments that plainly fit.

    ``inspect.Signature.bind`` takes about 2 µs, a tenth of a send. For a function
    with only ordinary parameters (no ``*args``, ``**kwargs`` or positional-only
    ones), counting and name lookups answer in a fraction of that; anything else,
    and every misfit (for its message), goes through ``bind``.
    """

    __slots__ = ("fn", "signature", "_positional", "_names", "_required", "_simple")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.signature = _signature(fn)
        parameters = list(self.signature.parameters.values()) if self.signature else []
        kinds = {p.kind for p in parameters}
        ordinary = {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}
        self._simple = self.signature is not None and kinds <= ordinary
        self._positional = tuple(
            p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        self._names = frozenset(p.name for p in parameters)
        # Each parameter without a default: (its position, past the end if keyword-only; name).
        position = {name: index for index, name in enumerate(self._positional)}
        self._required = tuple(
            (position.get(p.name, len(parameters)), p.name)
            for p in parameters
            if p.default is inspect.Parameter.empty
        )

    def misfit(self, args: tuple | list, kwargs: dict[str, Any]) -> str | None:
        """Why ``args`` and ``kwargs`` do not fit (Python's own words), or None when they do."""
        if self.signature is None:
            return None
        if self._simple and self._fits(args, kwargs):
            return None
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as error:
            return str(error)
        return None

    def _fits(self, args: tuple | list, kwargs: dict[str, Any]) -> bool:
        given = len(args)
        if given > len(self._positional):
            return False
        for name in kwargs:
            if name not in self._names or name in self._positional[:given]:
                return False
        for position, name in self._required:
            if position >= given and name not in kwargs:
                return False
        return True


class Shapes:
    """The :class:`Shape` of each actor's function, made once (again if the actor changes)."""

    def __init__(self) -> None:
        self._by_actor: dict[str, Shape] = {}

    def of(self, actor: Actor) -> Shape:
        shape = self._by_actor.get(actor.actor_name)
        if shape is None or shape.fn is not actor.fn:
            shape = self._by_actor[actor.actor_name] = Shape(actor.fn)
        return shape


def wrong_arguments(actor: Actor, shape: Shape, misfit: str, where: str = "") -> BadArguments:
    """The one line for arguments that do not fit ``actor``: its signature and Python's reason."""
    shown = _shown(shape.signature) if shape.signature is not None else "(...)"
    return BadArguments(f"{where}wrong arguments for {actor.actor_name}{shown}: {misfit}")


class _Written:
    """An annotation kept as text (``from __future__ import annotations``), shown unquoted."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _shown(signature: inspect.Signature) -> str:
    """``signature`` as written in the source: parameters only, annotations unquoted."""
    parameters = [
        p.replace(annotation=_Written(p.annotation)) if isinstance(p.annotation, str) else p
        for p in signature.parameters.values()
    ]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


def check_arguments(
    actor: Actor,
    args: tuple | list,
    kwargs: dict[str, Any],
    shapes: Shapes | None = None,
    where: str = "",
) -> None:
    """Raise :class:`BadArguments` unless ``args`` and ``kwargs`` fit ``actor``'s function.

    ``where`` starts the error's line (``"job.send(...): "``).
    """
    shape = (shapes or Shapes()).of(actor)
    misfit = shape.misfit(args, kwargs)
    if misfit is not None:
        raise wrong_arguments(actor, shape, misfit, where)


#: Stands for the previous step's result when a pipeline step is checked at send.
_RESULT = object()


class SendChecks(Middleware):
    """Refuses a fresh send whose arguments are not JSON or do not fit the actor (module doc)."""

    def __init__(self) -> None:
        self.shapes = Shapes()

    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        if outcomes.enqueue_kind(message, delay) != outcomes.SENT:
            return
        actor = broker.actors.get(message.actor_name)
        args, kwargs, options = message.args, message.kwargs, message.options
        plain = is_plain_json(args) and is_plain_json(kwargs) and is_plain_json(options)
        if not plain and not encodes(message.asdict()):
            raise not_json_error(message, actor.fn if actor is not None else None)
        if actor is None:
            return  # declared in the workers only: they check it when it runs
        shape = self.shapes.of(actor)
        misfit = shape.misfit(args, kwargs)
        if misfit is not None:
            raise wrong_arguments(actor, shape, misfit, f"{message.actor_name}.send(...): ")
        target = options.get("pipe_target")
        step, previous = 2, actor
        while isinstance(target, dict):
            following = broker.actors.get(str(target.get("actor_name")))
            if following is None:
                return  # declared in the workers only
            where = f"{message.actor_name}.send(...): pipeline step {step}: "
            self._check_step(following, target, previous, where)
            previous, target = following, (target.get("options") or {}).get("pipe_target")
            step += 1

    def _check_step(
        self, actor: Actor, target: dict[str, Any], previous: Actor, where: str
    ) -> None:
        """A pipeline's later step: its arguments, then the previous step's result (Pipelines)."""
        options = target.get("options") or {}
        args = tuple(target.get("args") or ())
        piped = not (options.get("pipe_ignore") or previous.options.get("pipe_ignore"))
        if piped:
            args += (_RESULT,)
        shape = self.shapes.of(actor)
        misfit = shape.misfit(args, target.get("kwargs") or {})
        if misfit is not None:
            if piped:
                misfit += (
                    " (the previous step's result comes as its last argument, unless "
                    "pipe_ignore=True)"
                )
            raise wrong_arguments(actor, shape, misfit, where)
