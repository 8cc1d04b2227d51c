"""Every use jobkit makes of pika's private parts, in one place.

jobkit's bulk publisher (``brokers.rabbitmq.amqp_confirms``) publishes on the
asynchronous channel under a blocking one, so it need not wait for each confirm,
and writes many messages' frames to the socket at once. pika has no public way to
do either. Nothing else in the product touches pika's internals
(``tests/test_seams.py`` checks both that and that each one still exists).

Version: major.minor. ``pyproject.toml`` allows ``pika>=1.3``; these internals
have not changed within a minor release, so :func:`check_version` accepts any
patch release of :data:`TESTED`'s minor and refuses the rest until the test has
run against them.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.channel import Channel

#: The pika release this module was checked against (any patch release of its minor passes).
TESTED = "1.4.4"
_MODULE = "brokers/pika_seam.py"


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def check_version(installed: str | None = None) -> None:
    """Raise ``RuntimeError`` unless the installed pika has :data:`TESTED`'s major.minor."""
    installed = installed or importlib.metadata.version("pika")
    if _major_minor(installed) != _major_minor(TESTED):
        raise RuntimeError(
            f"jobkit's pika seam was tested with pika {TESTED}; installed {installed}: "
            f"run tests/test_seams.py and update {_MODULE}"
        )


def channel_impl(channel: BlockingChannel) -> Channel:
    """The async Channel under a blocking one (``BlockingChannel._impl``): no waits for confirms."""
    return channel._impl


class FrameGatherer:
    """Writes a connection's frames in one ``send()`` per 64 KiB, not one per frame.

    pika writes each frame (three per message) with its own ``send()``: about a
    third of the bulk path's CPU. This replaces the connection's
    ``Connection._output_marshaled_frames`` (keeping its ``bytes_sent`` and
    ``frames_sent`` counts) and writes through ``Connection._adapter_emit_data``
    on :meth:`flush`, or when 64 KiB wait. Only for a connection of one's own.
    Left as is (``active`` false) if pika's internals differ from 1.3/1.4's.
    """

    def __init__(self, connection: pika.BlockingConnection) -> None:
        impl = self._impl = connection._impl
        self._frames: list[bytes] = []
        self._frames_size = 0
        self._emit = getattr(impl, "_adapter_emit_data", None)
        if self._emit is None or not hasattr(impl, "_output_marshaled_frames"):
            self._emit = None
            return
        impl._output_marshaled_frames = self._gather

    @property
    def active(self) -> bool:
        """Whether frames are being gathered (pika's internals were as expected)."""
        return self._emit is not None

    def _gather(self, frames: Any) -> None:
        self._frames.extend(frames)
        self._frames_size += sum(len(frame) for frame in frames)
        self._impl.frames_sent += len(frames)
        if self._frames_size >= 65536:
            self.flush()

    def flush(self) -> None:
        """Write what is gathered, in one call."""
        if self._frames:
            data = b"".join(self._frames)
            self._frames.clear()
            self._frames_size = 0
            self._impl.bytes_sent += len(data)
            self._emit(data)  # type: ignore[misc]  # frames gather only when it is set

    def release(self) -> None:
        """Write what is gathered and give pika its own writer back (closing frames go out)."""
        if self._emit is not None:
            self.flush()
            del self._impl._output_marshaled_frames
            self._emit = None
