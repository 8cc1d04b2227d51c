"""Every use jobkit makes of prometheus-client's private parts, in one place.

jobkit's metrics (``middleware.metric_tally``) sum a second's observations in
memory and then add them to each histogram bucket at once: in multiprocess mode
every ``observe()`` takes a lock and writes an mmapped file per bucket, and
prometheus-client has no public way to add many observations. Nothing else in
the product touches its internals (``tests/test_seams.py`` checks both that and
that each one still exists).

This module does not import prometheus_client: ``PROMETHEUS_MULTIPROC_DIR``
must be set before the first import (``middleware.metrics``), which picks how
values are stored.

Version: major.minor. ``pyproject.toml`` allows ``prometheus-client>=0.20``
(0.x: its minor releases are its major ones); :func:`check_version` accepts any
patch release of :data:`TESTED`'s minor and refuses the rest until the test
has run against them.
"""

from __future__ import annotations

import importlib.metadata
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any

#: The prometheus-client release this module was checked against (any patch of its minor).
TESTED = "0.26.0"
_MODULE = "middleware/prometheus_seam.py"


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def check_version(installed: str | None = None) -> None:
    """Raise ``RuntimeError`` unless prometheus-client has :data:`TESTED`'s major.minor."""
    installed = installed or importlib.metadata.version("prometheus-client")
    if _major_minor(installed) != _major_minor(TESTED):
        raise RuntimeError(
            f"jobkit's prometheus-client seam was tested with prometheus-client {TESTED}; "
            f"installed {installed}: run tests/test_seams.py and update {_MODULE}"
        )


#: ``Histogram._upper_bounds``: a histogram child's bucket bounds (``+Inf`` last), which
#: the tally buckets its pending observations by, as ``observe()`` would.
bucket_bounds: Callable[[Any], Sequence[float]] = operator.attrgetter("_upper_bounds")


def add_observations(histogram: Any, total: float, counts: Sequence[float]) -> None:
    """What ``observe()`` does, once per bucket (``Histogram._sum``, ``Histogram._buckets``).

    ``total`` is the sum of the observations, ``counts`` how many fell in each
    bucket (not cumulative), in the order of :data:`bucket_bounds`.
    """
    if not any(counts):
        return
    histogram._sum.inc(total)
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
