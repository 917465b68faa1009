"""The health monitor's state machine, driven by a fake clock and backends whose probe is scripted.

A real backend cannot be made to hang or raise on cue, so these use a probe-only double; the
end-to-end test with a real local-directory backend is at the bottom.
"""

from __future__ import annotations

import itertools
import os

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from s3balance import metrics
from s3balance.backends.interface import BackendUnavailable
from s3balance.health import HealthMonitor

pytestmark = pytest.mark.timeout(60)

PERIOD = 10.0
PROBE_TIMEOUT = 2.0
_names = itertools.count()


def unique(prefix: str) -> str:
    """Metric series are process-wide: every test uses names of its own."""
    return f"{prefix}-{next(_names)}"


class ScriptedBackend:
    """Answers probes the way ``mode`` says: ok, fail (async), raise (synchronously), hang."""

    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.mode = mode
        self.probes = 0
        self.cancelled = 0
        self.timeouts: list[float] = []

    def probe(self, timeout: float) -> Deferred[None]:
        self.probes += 1
        self.timeouts.append(timeout)
        if self.mode == "ok":
            return defer.succeed(None)
        if self.mode == "fail":
            return defer.fail(BackendUnavailable(self.name, "connection refused"))
        if self.mode == "raise":
            raise RuntimeError("probe exploded")
        if self.mode == "hang":

            def cancelled(_: Deferred[None]) -> None:
                self.cancelled += 1

            return Deferred(cancelled)
        raise AssertionError(self.mode)


def healthy_gauge(name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("s3_balance_bucket_healthy", {"bucket": name})


def make_monitor(
    backends: dict[str, ScriptedBackend], clock: Clock, unhealthy: int = 3, healthy: int = 2
) -> HealthMonitor:
    return HealthMonitor(
        lambda: dict(backends),  # type: ignore[arg-type, return-value]
        clock,
        PERIOD,
        PROBE_TIMEOUT,
        unhealthy_threshold=unhealthy,
        healthy_threshold=healthy,
    )


def test_backends_start_healthy_before_any_probe() -> None:
    name = unique("fresh")
    monitor = make_monitor({name: ScriptedBackend(name)}, Clock())
    state = monitor.state(name)
    assert state.healthy and state.last_probe is None
    assert monitor.is_healthy(name)


def test_a_proven_backend_goes_down_after_n_failures_and_up_after_m_successes() -> None:
    clock = Clock()
    name = unique("flappy")
    backend = ScriptedBackend(name)
    monitor = make_monitor({name: backend}, clock, unhealthy=3, healthy=2)
    monitor.startService()
    assert backend.probes == 1  # started with now=True
    assert monitor.is_healthy(name)
    assert backend.timeouts == [PROBE_TIMEOUT]

    backend.mode = "fail"
    clock.advance(PERIOD)
    clock.advance(PERIOD)
    assert monitor.is_healthy(name), "two failures are below the threshold of three"
    assert monitor.state(name).consecutive_failures == 2
    clock.advance(PERIOD)
    state = monitor.state(name)
    assert not state.healthy
    assert "connection refused" in (state.last_error or "")
    assert healthy_gauge(name) == 0.0

    backend.mode = "ok"
    clock.advance(PERIOD)
    assert not monitor.is_healthy(name), "one success is below the threshold of two"
    clock.advance(PERIOD)
    assert monitor.is_healthy(name)
    assert monitor.state(name).last_error is None
    assert healthy_gauge(name) == 1.0
    assert backend.probes == 6
    monitor.stopService()


def test_a_success_between_failures_resets_the_count() -> None:
    clock = Clock()
    name = unique("intermittent")
    backend = ScriptedBackend(name)
    monitor = make_monitor({name: backend}, clock, unhealthy=2)
    monitor.startService()
    for mode in ("fail", "ok", "fail", "ok", "fail"):
        backend.mode = mode
        clock.advance(PERIOD)
        assert monitor.is_healthy(name), mode
    monitor.stopService()


def test_a_backend_failing_its_very_first_probe_is_unhealthy_at_once() -> None:
    clock = Clock()
    name = unique("dead-at-start")
    monitor = make_monitor({name: ScriptedBackend(name, "fail")}, clock)
    monitor.startService()
    assert not monitor.is_healthy(name)
    assert healthy_gauge(name) == 0.0
    monitor.stopService()


def test_a_hanging_probe_times_out_and_counts_as_a_failure() -> None:
    clock = Clock()
    name = unique("hanging")
    backend = ScriptedBackend(name)
    monitor = make_monitor({name: backend}, clock, unhealthy=1)
    monitor.startService()
    backend.mode = "hang"
    clock.advance(PERIOD)
    assert monitor.is_healthy(name), "still waiting for the answer"
    clock.advance(PROBE_TIMEOUT - 0.1)
    assert monitor.is_healthy(name)
    clock.advance(0.1)  # within one period plus the probe timeout
    state = monitor.state(name)
    assert not state.healthy
    assert state.last_error == "probe timed out"
    assert backend.cancelled == 1, "the hanging request must be cancelled, not leaked"
    monitor.stopService()


def test_a_probe_raising_synchronously_does_not_stop_the_loop() -> None:
    clock = Clock()
    name = unique("raising")
    backend = ScriptedBackend(name, "raise")
    monitor = make_monitor({name: backend}, clock, unhealthy=1, healthy=1)
    monitor.startService()
    assert not monitor.is_healthy(name)
    assert "probe exploded" in (monitor.state(name).last_error or "")
    clock.advance(PERIOD)
    clock.advance(PERIOD)
    assert backend.probes == 3
    backend.mode = "ok"
    clock.advance(PERIOD)
    assert monitor.is_healthy(name)
    monitor.stopService()


def test_probes_run_concurrently_and_rounds_do_not_overlap() -> None:
    clock = Clock()
    slow_name, quick_name = unique("slow"), unique("quick")
    slow = ScriptedBackend(slow_name, "hang")
    quick = ScriptedBackend(quick_name, "fail")
    monitor = HealthMonitor(
        lambda: {slow_name: slow, quick_name: quick},  # type: ignore[dict-item]
        clock,
        period=1.0,
        probe_timeout=5.0,
    )
    monitor.startService()
    # The quick backend's answer is not held up by the hanging one.
    assert monitor.state(quick_name).last_probe == 0.0
    assert not monitor.is_healthy(quick_name)
    for _ in range(4):
        clock.advance(1.0)
    assert slow.probes == 1 and quick.probes == 1, "rounds were skipped while one still ran"
    clock.advance(1.0)  # the hanging probe times out at t=5; the next tick starts a new round
    clock.advance(1.0)
    assert slow.probes == 2
    monitor.stopService()


def test_mark_failure_counts_like_a_failed_probe() -> None:
    clock = Clock()
    name = unique("reported")
    monitor = make_monitor({name: ScriptedBackend(name)}, clock, unhealthy=2)
    monitor.startService()
    monitor.mark_failure(name, "connection refused on PUT")
    assert monitor.is_healthy(name)
    monitor.mark_failure(name, "connection refused on GET")
    assert not monitor.is_healthy(name)
    assert monitor.state(name).last_error == "connection refused on GET"
    monitor.stopService()


def test_probe_now_runs_a_round_and_reports_latency() -> None:
    clock = Clock()
    name = unique("latency")
    backend = ScriptedBackend(name, "hang")
    monitor = make_monitor({name: backend}, clock)
    answers: list[Deferred[None]] = []
    backend.probe = lambda timeout: answers.append(Deferred()) or answers[-1]  # type: ignore
    done = monitor.probe_now()
    joined = monitor.probe_now()  # joins the running round instead of starting another
    assert len(answers) == 1
    clock.advance(0.25)
    answers[0].callback(None)
    assert done.called and joined.called
    assert monitor.state(name).latency == 0.25
    assert (
        metrics.REGISTRY.get_sample_value(
            "s3_balance_bucket_probe_latency_seconds", {"bucket": name}
        )
        == 0.25
    )


def test_removed_backends_are_forgotten_and_late_answers_ignored() -> None:
    clock = Clock()
    keep_name, gone_name = unique("keep"), unique("gone")
    backends = {keep_name: ScriptedBackend(keep_name), gone_name: ScriptedBackend(gone_name)}
    monitor = make_monitor(backends, clock)  # type: ignore[arg-type]
    monitor.startService()
    backends[gone_name].mode = "hang"
    clock.advance(PERIOD)
    del backends[gone_name]
    clock.advance(PROBE_TIMEOUT)  # the gone backend's probe times out after its removal
    assert monitor.state(gone_name).consecutive_failures == 0
    clock.advance(PERIOD)
    assert set(monitor.states()) == {keep_name}
    monitor.stopService()


def test_stopping_cancels_probes_without_blaming_the_backend() -> None:
    clock = Clock()
    name = unique("stopping")
    backend = ScriptedBackend(name)
    monitor = make_monitor({name: backend}, clock, unhealthy=1)
    monitor.startService()
    backend.mode = "hang"
    clock.advance(PERIOD)
    monitor.stopService()
    assert backend.cancelled == 1
    assert monitor.is_healthy(name)
    clock.advance(PERIOD * 3)
    assert backend.probes == 2


class LocalDirectoryHealthTests(unittest.TestCase):
    """A real local-directory backend whose root disappears (an unmounted disk) and comes back."""

    timeout = 30

    async def test_a_vanished_root_flips_the_backend_unhealthy_and_back(self) -> None:
        from twisted.internet import reactor

        from s3balance.backends.local import LocalDirectoryBackend

        base = self.mktemp()
        os.makedirs(base)
        root = os.path.join(base, "disk")
        name = unique("local")
        backend = LocalDirectoryBackend(name, root, reactor)
        self.addCleanup(backend.close)
        monitor = HealthMonitor(
            lambda: {name: backend},
            reactor,
            period=60.0,
            probe_timeout=5.0,
            unhealthy_threshold=2,
            healthy_threshold=2,
        )
        await monitor.probe_now()
        self.assertTrue(monitor.is_healthy(name))
        self.assertIsNotNone(monitor.state(name).latency)

        os.rename(root, root + ".unmounted")
        await monitor.probe_now()
        self.assertTrue(monitor.is_healthy(name), "one failure is below the threshold")
        await monitor.probe_now()
        state = monitor.state(name)
        self.assertFalse(state.healthy)
        self.assertIsNotNone(state.last_error)
        self.assertEqual(healthy_gauge(name), 0.0)

        os.rename(root + ".unmounted", root)
        await monitor.probe_now()
        self.assertFalse(monitor.is_healthy(name))
        await monitor.probe_now()
        self.assertTrue(monitor.is_healthy(name))
        self.assertEqual(healthy_gauge(name), 1.0)


def test_each_answered_probe_counts_as_a_head_bucket() -> None:
    """The probe is a HeadBucket (class B) like any other: counted when answered, not when it
    failed."""
    clock = Clock()
    name = unique("counted")
    backend = ScriptedBackend(name)
    counted: list[tuple[str, str]] = []
    monitor = HealthMonitor(
        lambda: {name: backend},  # type: ignore[dict-item]
        clock,
        PERIOD,
        PROBE_TIMEOUT,
        record_operation=lambda backend_name, operation: counted.append(
            (backend_name, operation)
        ),
    )
    monitor.startService()
    clock.advance(PERIOD)
    backend.mode = "fail"
    clock.advance(PERIOD)
    monitor.stopService()
    assert backend.probes == 3
    assert counted == [(name, "HeadBucket")] * 2
