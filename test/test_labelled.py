"""labelled(): the same child as ``labels()``, found through prometheus_client's own dict."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from s3balance.labelled import labelled


def test_labelled_finds_the_same_child_as_labels_and_creates_missing_ones() -> None:
    counter = Counter("t_requests", "test", ["bucket", "op"], registry=CollectorRegistry())
    created = labelled(counter, "vb", "GET")  # missing: made by labels()
    assert created is counter.labels("vb", "GET")
    assert labelled(counter, "vb", "GET") is created
    counter.remove("vb", "GET")
    assert labelled(counter, "vb", "GET") is not created  # a removed series is made anew


def test_prometheus_client_still_keeps_children_where_labelled_looks() -> None:
    """Fails on a prometheus_client that renamed the private dict (labelled() then works, but
    at labels()'s cost: update s3balance/labelled.py)."""
    counter = Counter("t_found", "test", ["bucket"], registry=CollectorRegistry())
    child = counter.labels("vb")
    assert counter._metrics.get(("vb",)) is child
