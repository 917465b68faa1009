"""A metric's labelled child, found without ``labels()``'s cost on the request path.

``MetricWrapperBase.labels`` validates its arguments, converts every value with ``str`` and takes
the metric's lock on each call: a dozen calls per small request add up to a measurable share of
its CPU.  The children live in the metric's own dict, keyed by the tuple of label values; reading
that dict (one atomic lookup) finds an existing child, and ``labels()`` still creates a missing
one.  Nothing is cached here, so a series removed (``metric.remove``) is simply created again by
the next ``labels()``, exactly as before.

The dict is prometheus_client's private ``_metrics``: should a release rename it, every call falls
back to ``labels()`` (slower, never wrong), and ``test_labelled`` fails to say so.
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)


def labelled(metric: M, *values: str) -> M:
    """``metric.labels(*values)`` for label values that are already strings."""
    children = getattr(metric, "_metrics", None)
    found = children.get(values) if children is not None else None
    return found if found is not None else metric.labels(*values)  # type: ignore[return-value]
