"""The one periodic loop: a round that fails is logged and costs that round only."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from s3balance.admin.history import Totals, TrafficHistory
from s3balance.periodic import Periodic


class PeriodicTests(SynchronousTestCase):
    def test_a_failed_round_does_not_end_the_loop(self) -> None:
        clock = Clock()
        calls: list[float] = []

        def work() -> None:
            calls.append(clock.seconds())
            if len(calls) == 1:
                raise RuntimeError("the first round fails")

        loop = Periodic(clock, work, "test work")
        loop.start(5.0)
        for _ in range(3):
            clock.advance(5.0)
        self.assertEqual(calls, [0.0, 5.0, 10.0, 15.0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        loop.stop()
        clock.advance(5.0)
        self.assertEqual(len(calls), 4)
        self.assertFalse(loop.running)

    def test_a_round_in_progress_is_waited_for_by_the_next_and_by_stop(self) -> None:
        clock = Clock()
        rounds: list[defer.Deferred[None]] = []

        def work() -> defer.Deferred[None]:
            rounds.append(defer.Deferred())
            return rounds[-1]

        loop = Periodic(clock, work, "slow work")
        loop.start(1.0)
        clock.advance(3.0)
        self.assertEqual(len(rounds), 1)  # the next round waits for the running one
        stopped = loop.stop()
        self.assertNoResult(stopped)
        rounds[0].errback(RuntimeError("a late failure"))
        self.successResultOf(stopped)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop_before_start_and_twice(self) -> None:
        loop = Periodic(Clock(), lambda: None, "idle")
        self.successResultOf(loop.stop())
        loop.start(1.0)
        self.assertRaises(RuntimeError, loop.start, 1.0)
        loop.stop()
        loop.stop()


def test_the_traffic_history_keeps_sampling_after_a_failed_reading() -> None:
    """It ran on a bare LoopingCall: one reading that raised ended the console's history for
    the life of the daemon."""
    clock = Clock()
    readings: list[Totals | Exception] = [
        Totals(requests=0),
        RuntimeError("a counter could not be read"),
        Totals(requests=20),
        Totals(requests=40),
    ]

    def read() -> Totals:
        reading = readings.pop(0)
        if isinstance(reading, Exception):
            raise reading
        return reading

    history = TrafficHistory(clock, period=10.0, size=5, read=read)
    history.startService()
    for _ in range(3):
        clock.advance(10)
    history.stopService()
    assert not readings
    assert [sample["requests_per_second"] for sample in history.samples()] == [1.0, 2.0]
