"""The rebalance planner, pure: spread converges, pack empties the tail, thresholds, caps, rooms,
replicas and zones, backends that may not take part, and determinism."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from twisted.internet import defer
from twisted.trial import unittest

from s3balance.db.records import Location, PlacedObject
from s3balance.rebalancing import (
    BackendState,
    Move,
    Planner,
    fill_plan,
    keeps_zone_spread,
)


@dataclass
class World:
    """Backends and the objects on them, changed by carrying out moves (as a job would)."""

    states: list[BackendState]
    objects: dict[int, PlacedObject]

    def used(self, name: str) -> int:
        return sum(
            o.size for o in self.objects.values() for loc in o.locations if loc.backend == name
        )

    def current(self) -> list[BackendState]:
        """The states with used bytes (and room, from the capacity) as the objects say."""
        fresh = []
        for state in self.states:
            used = self.used(state.name)
            room = None if state.capacity is None else state.capacity - used
            if state.room is not None and state.capacity is not None:
                room = min(room or 0, state.room - (used - state.used_bytes))
            fresh.append(replace(state, used_bytes=used, room=room))
        return fresh

    async def read_page(self, backend: str, after: int, limit: int) -> Sequence[PlacedObject]:
        found = [
            o for object_id, o in sorted(self.objects.items())
            if object_id > after and any(loc.backend == backend for loc in o.locations)
        ]  # fmt: skip
        return found[:limit]

    def apply(self, moves: list[Move]) -> None:
        for move in moves:
            current = self.objects[move.object_id]
            assert current.locations == move.locations, "the plan saw other locations"
            self.objects[move.object_id] = replace(current, locations=move.new_locations)

    def fraction(self, name: str) -> float:
        state = next(s for s in self.states if s.name == name)
        assert state.capacity
        return self.used(name) / state.capacity


def backend(name: str, capacity: int | None = 1000, zone: str | None = None, **kw: object) -> (
    BackendState
):
    return BackendState(
        name=name, zone=zone or f"z-{name}", used_bytes=0, capacity=capacity, room=None,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def world(states: list[BackendState], placement: dict[str, list[int]]) -> World:
    """Objects of the given sizes on each backend (one copy each), ids in order."""
    objects: dict[int, PlacedObject] = {}
    next_id = 1
    for name, sizes in placement.items():
        for size in sizes:
            key = f"k{next_id}"
            location = Location(name, f"vb/{key}")
            objects[next_id] = PlacedObject(next_id, "vb", key, size, (location,))
            next_id += 1
    w = World(states, objects)
    w.states = w.current()
    return w


def plan(w: World, mode: str, threshold: float, **kw: int) -> tuple[Planner, bool]:
    planner = Planner(w.current(), mode, threshold, **kw)
    partial = run(fill_plan(planner, w.read_page, page_size=7))
    return planner, partial


def run(coroutine: object) -> bool:
    """Run a coroutine that never waits (the world answers at once)."""
    result = defer.ensureDeferred(coroutine)  # type: ignore[call-overload]
    outcome: list[bool] = []
    result.addCallback(outcome.append)
    assert outcome, "the coroutine waited"
    return outcome[0]


class SpreadTests(unittest.TestCase):
    def test_empty_newcomer_gets_its_share(self) -> None:
        w = world(
            [backend("a"), backend("b"), backend("c")],
            {"a": [10] * 80, "b": [10] * 80, "c": []},
        )
        planner, partial = plan(w, "spread", 0.1)
        self.assertFalse(partial)
        self.assertTrue(planner.report()["balanced_after"])
        self.assertFalse(planner.report()["balanced_before"])
        w.apply(planner.moves)
        mean = 1600 / 3000
        for name in "abc":
            self.assertLessEqual(abs(w.fraction(name) - mean), 0.1 + 1e-9, name)
        # Only what was needed moved: c got into the band and no further than the mean.
        self.assertLessEqual(w.used("c"), mean * 1000 + 10)
        self.assertGreaterEqual(w.used("c"), (mean - 0.1) * 1000)
        # Both full backends gave (they take turns), neither went below the mean's band.
        self.assertTrue(all(move.target == "c" for move in planner.moves))
        self.assertGreater(min(w.used("a"), w.used("b")), 800 - 400)

    def test_converges_over_capped_plans(self) -> None:
        w = world(
            [backend("a"), backend("b"), backend("c"), backend("d", capacity=2000)],
            {"a": [25] * 36, "b": [5] * 150, "c": [], "d": [40] * 10},
        )
        reasons = []
        for _ in range(20):
            planner, partial = plan(w, "spread", 0.05, max_moves=4)
            reasons.append(planner.stop_reason(partial))
            w.apply(planner.moves)
            if not planner.moves:
                break
        self.assertEqual(reasons[-1], "balanced")
        self.assertIn("capped", reasons)
        mean = w.used("a") + w.used("b") + w.used("c") + w.used("d")
        mean /= 5000
        for name in "abcd":
            self.assertLessEqual(abs(w.fraction(name) - mean), 0.05 + 1e-9, name)

    def test_balanced_pool_moves_nothing(self) -> None:
        w = world([backend("a"), backend("b")], {"a": [10] * 50, "b": [10] * 45})
        planner, partial = plan(w, "spread", 0.1)
        self.assertEqual(planner.moves, [])
        self.assertEqual(planner.examined, 0)
        self.assertEqual(planner.stop_reason(partial), "balanced")
        self.assertTrue(planner.report()["balanced_before"])

    def test_threshold_decides(self) -> None:
        w = world([backend("a"), backend("b")], {"a": [10] * 60, "b": [10] * 30})
        loose, _ = plan(w, "spread", 0.2)
        self.assertEqual(loose.moves, [])
        tight, _ = plan(w, "spread", 0.02)
        moved = sum(move.size for move in tight.moves)
        # Mean 0.45: a must come down to within 0.02 of it, and never below 0.43.
        self.assertGreaterEqual(moved, 600 - 470)
        self.assertLessEqual(moved, 600 - 430)
        zero, partial = plan(w, "spread", 0.0)
        self.assertEqual(sum(move.size for move in zero.moves), 150)
        self.assertEqual(zero.stop_reason(partial), "balanced")

    def test_objects_larger_than_any_gap_stay(self) -> None:
        w = world([backend("a"), backend("b")], {"a": [500, 100], "b": [300]})
        planner, partial = plan(w, "spread", 0.05)
        # Mean 0.45: moving 100 brings a to 0.5, b to 0.4 (both out by 0.05: allowed at the
        # edge); the 500 would throw b far above the band.
        self.assertTrue(all(move.size == 100 for move in planner.moves))
        w2 = world([backend("a"), backend("b")], {"a": [500], "b": [100]})
        stuck, partial = plan(w2, "spread", 0.1)
        self.assertEqual(stuck.moves, [])
        self.assertEqual(stuck.stop_reason(partial), "stuck")
        self.assertEqual(stuck.report()["out_of_balance_after"], ["a", "b"])

    def test_room_bounds_the_target(self) -> None:
        states = [backend("a"), replace(backend("b"), room=55)]
        w = world(states, {"a": [10] * 90, "b": []})
        w.states[1] = replace(w.states[1], room=55)
        planner = Planner(w.states, "spread", 0.1)
        run(fill_plan(planner, w.read_page))
        self.assertEqual(sum(move.size for move in planner.moves), 50)
        self.assertEqual(planner.stop_reason(False), "stuck")

    def test_backends_that_may_not_take_part(self) -> None:
        states = [
            backend("a"),
            backend("full-budget", receives=False, note="over its class A budget"),
            backend("draining", receives=False, gives=False, note="draining"),
            backend("unbounded", capacity=None),
            backend("target"),
        ]
        w = world(states, {"a": [10] * 90, "draining": [10] * 90, "unbounded": [10] * 50})
        planner, _ = plan(w, "spread", 0.1)
        self.assertTrue(planner.moves)
        self.assertEqual({move.target for move in planner.moves}, {"target"})
        self.assertEqual({move.source.backend for move in planner.moves}, {"a"})
        # The mean counts the participants only: a and target (full-budget, empty, cannot be
        # brought nearer to it).
        self.assertAlmostEqual(planner.mean_fraction or 0, 900 / 2000)
        report = planner.report()
        parts = {b["name"]: b["takes_part"] for b in report["backends"]}
        self.assertEqual(parts, {"a": True, "full-budget": False, "draining": False,
                                 "unbounded": False, "target": True})  # fmt: skip
        self.assertEqual(report["held_out"], ["full-budget"])
        w.apply(planner.moves)
        self.assertLessEqual(abs(w.fraction("a") - w.fraction("target")), 0.2 + 1e-9)

    def test_a_backend_that_cannot_give_is_left_out_and_the_others_balance(self) -> None:
        states = [backend("a", gives=False), backend("b"), backend("c")]
        w = world(states, {"a": [10] * 90, "b": [10] * 60})
        planner, partial = plan(w, "spread", 0.05)
        # Without a (0.9, which nothing can bring down), b and c balance around 0.3.
        self.assertEqual(planner.held_out, ["a"])
        self.assertAlmostEqual(planner.mean_fraction or 0, 0.3)
        self.assertEqual(planner.stop_reason(partial), "balanced")
        w.apply(planner.moves)
        self.assertEqual(w.used("a"), 900)
        self.assertLessEqual(abs(w.fraction("b") - 0.3), 0.05 + 1e-9)
        self.assertLessEqual(abs(w.fraction("c") - 0.3), 0.05 + 1e-9)
        alone = world([backend("a", gives=False), backend("b")], {"a": [10] * 90})
        nothing, partial = plan(alone, "spread", 0.1)
        self.assertEqual((nothing.moves, nothing.held_out), ([], ["a"]))
        self.assertEqual(nothing.stop_reason(partial), "balanced")

    def test_caps(self) -> None:
        w = world([backend("a"), backend("b")], {"a": [10] * 100})
        planner, partial = plan(w, "spread", 0.0, max_moves=3)
        self.assertEqual(len(planner.moves), 3)
        self.assertTrue(partial)
        self.assertEqual(planner.stop_reason(partial), "capped")
        by_bytes, partial = plan(w, "spread", 0.0, max_bytes=95)
        self.assertEqual(by_bytes.planned_bytes, 90)
        self.assertEqual(by_bytes.stop_reason(partial), "capped")

    def test_zero_byte_objects_never_move(self) -> None:
        w = world([backend("a"), backend("b")], {"a": [0] * 10 + [100] * 2})
        planner, _ = plan(w, "spread", 0.0)
        self.assertTrue(planner.moves)
        self.assertTrue(all(move.size == 100 for move in planner.moves))

    def test_deterministic(self) -> None:
        rng = random.Random(7)
        placement = {name: [rng.randint(1, 40) for _ in range(60)] for name in "abc"}
        placement["d"] = []
        w = world([backend(n, capacity=3000) for n in "abcd"], placement)
        first, _ = plan(w, "spread", 0.05)
        second, _ = plan(w, "spread", 0.05)
        self.assertTrue(first.moves)
        self.assertEqual(first.moves, second.moves)


class ReplicaTests(unittest.TestCase):
    def test_zone_spread(self) -> None:
        zone = {"a": "east", "b": "west", "c": "east", "d": "west"}.__getitem__
        both = (Location("a", "k"), Location("b", "k"))
        self.assertTrue(keeps_zone_spread(both, "a", "c", zone))  # east to east
        self.assertFalse(keeps_zone_spread(both, "a", "d", zone))  # two copies in the west
        self.assertTrue(keeps_zone_spread((Location("a", "k"),), "a", "d", zone))
        same = (Location("a", "k"), Location("c", "k"))  # both east already: nothing to lose
        self.assertTrue(keeps_zone_spread(same, "a", "b", zone))
        self.assertTrue(keeps_zone_spread(same, "a", "d", zone))

    def test_never_to_a_holder_and_zones_kept(self) -> None:
        states = [
            backend("a", zone="east"),
            backend("b", zone="west"),
            backend("c", zone="west"),
            backend("e", zone="east"),
        ]
        objects = {}
        for i in range(1, 41):
            locations = (Location("a", f"k{i}"), Location("b", f"k{i}"))
            objects[i] = PlacedObject(i, "vb", f"k{i}", 20, locations)
        w = World(states, objects)
        w.states = w.current()
        planner, _ = plan(w, "spread", 0.1)
        self.assertTrue(planner.moves)
        for move in planner.moves:
            holders = {loc.backend for loc in move.locations}
            self.assertNotIn(move.target, holders)
            zones = {planner.zone_of(loc.backend) for loc in move.new_locations}
            self.assertEqual(zones, {"east", "west"}, move)
        # a's copies went to e (east), b's to c (west).
        for move in planner.moves:
            self.assertEqual(
                (move.source.backend, move.target) in {("a", "e"), ("b", "c")}, True, move
            )
        w.apply(planner.moves)
        for name in "abce":
            self.assertLessEqual(abs(w.fraction(name) - 0.4), 0.1 + 1e-9)

    def test_random_pools_keep_every_rule(self) -> None:
        rng = random.Random(11)
        for round_ in range(30):
            names = [f"b{i}" for i in range(rng.randint(2, 6))]
            states = [
                backend(
                    name, capacity=rng.choice([2000, 4000, 8000]), zone=rng.choice("xyz"),
                    receives=rng.random() > 0.15, gives=rng.random() > 0.1,
                )
                for name in names
            ]  # fmt: skip
            objects = {}
            for i in range(1, rng.randint(20, 120)):
                copies = rng.randint(1, min(3, len(names)))
                holders = rng.sample(names[: max(copies, rng.randint(1, len(names)))], copies)
                size = rng.choice([0, 1, 10, 50, 200, 900])
                objects[i] = PlacedObject(
                    i, "vb", f"k{i}", size, tuple(Location(h, f"r{i}") for h in holders)
                )
            w = World(states, objects)
            w.states = w.current()
            # Some backends report less room than their max_size leaves.
            w.states = [
                replace(s, room=None if s.room is None else s.room // rng.choice([1, 2, 4]))
                for s in w.states
            ]
            mode = rng.choice(["spread", "pack"])
            threshold = rng.choice([0.0, 0.05, 0.2])
            planner = Planner(w.states, mode, threshold, max_moves=rng.choice([5, 1000]))
            run(fill_plan(planner, w.read_page, page_size=5))
            by_name = {s.name: s for s in w.states}
            planned_in: dict[str, int] = {}
            for move in planner.moves:
                target, source = by_name[move.target], by_name[move.source.backend]
                self.assertTrue(target.receives and source.gives, (round_, move))
                self.assertNotIn(move.target, {loc.backend for loc in move.locations})
                self.assertTrue(
                    keeps_zone_spread(move.locations, source.name, target.name, planner.zone_of)
                )
                self.assertGreater(move.size, 0)
                planned_in[move.target] = planned_in.get(move.target, 0) + move.size
                w.apply([move])
            for name, size in planned_in.items():
                room = by_name[name].room
                if room is not None:
                    self.assertLessEqual(size, room, (round_, name))
            self.assertLessEqual(len(planner.moves), planner.max_moves)


class PackTests(unittest.TestCase):
    def test_empties_the_tail(self) -> None:
        w = world(
            [backend("a"), backend("b"), backend("c")],
            {"a": [10] * 30, "b": [10] * 30, "c": [10] * 40},
        )
        planner, partial = plan(w, "pack", 0.0)
        w.apply(planner.moves)
        self.assertEqual(w.used("c"), 0)
        self.assertEqual(w.used("a"), 1000)
        self.assertEqual(w.used("b"), 0)
        self.assertEqual(planner.stop_reason(partial), "balanced")
        # The last backend's copies go first, to the first backend with room.
        self.assertEqual(planner.moves[0].source.backend, "c")
        self.assertEqual(planner.moves[0].target, "a")

    def test_threshold_counts_nearly_full_as_full(self) -> None:
        w = world(
            [backend("a"), backend("b"), backend("c")],
            {"a": [10] * 95, "b": [10] * 50, "c": [10] * 20},
        )
        planner, _ = plan(w, "pack", 0.1)
        w.apply(planner.moves)
        # a (95%) counts as full but still has room: c empties into a, then b.
        self.assertEqual((w.used("a"), w.used("b"), w.used("c")), (1000, 650, 0))
        again, partial = plan(w, "pack", 0.1)
        self.assertEqual(again.moves, [])
        self.assertEqual(again.stop_reason(partial), "balanced")

    def test_stops_when_the_front_is_nearly_full(self) -> None:
        w = world(
            [backend("a"), backend("b")],
            {"a": [10] * 50, "b": [10] * 80},
        )
        planner, _ = plan(w, "pack", 0.1)
        w.apply(planner.moves)
        self.assertEqual(w.used("a"), 900)
        self.assertEqual(w.used("b"), 400)

    def test_unbounded_front_takes_everything(self) -> None:
        w = world(
            [backend("a", capacity=None), backend("b")],
            {"a": [10] * 5, "b": [10] * 30},
        )
        planner, _ = plan(w, "pack", 0.1)
        w.apply(planner.moves)
        self.assertEqual(w.used("b"), 0)

    def test_pack_never_moves_backwards_or_to_a_holder(self) -> None:
        objects = {
            i: PlacedObject(i, "vb", f"k{i}", 10, (Location("a", f"k{i}"), Location("c", f"k{i}")))
            for i in range(1, 11)
        }
        w = World([backend("a", zone="z"), backend("b", zone="z"), backend("c", zone="z")], objects)
        w.states = w.current()
        planner, _ = plan(w, "pack", 0.0)
        self.assertEqual({(m.source.backend, m.target) for m in planner.moves}, {("c", "b")})

    def test_skipped_target_in_between(self) -> None:
        w = world(
            [backend("a", receives=False), backend("b"), backend("c")],
            {"a": [10] * 10, "c": [10] * 20},
        )
        planner, _ = plan(w, "pack", 0.0)
        w.apply(planner.moves)
        self.assertEqual((w.used("a"), w.used("b"), w.used("c")), (100, 200, 0))


class ValidationTests(unittest.TestCase):
    def test_refusals(self) -> None:
        states = [backend("a")]
        with self.assertRaises(ValueError):
            Planner(states, "shuffle", 0.1)
        with self.assertRaises(ValueError):
            Planner(states, "spread", 1.5)
        with self.assertRaises(ValueError):
            Planner(states, "spread", 0.1, max_moves=0)
        with self.assertRaises(ValueError):
            Planner([backend("a"), backend("a")], "spread", 0.1)


class DescribeTests(unittest.TestCase):
    """The command line's text of a plan (``s3balance rebalance --dry-run``)."""

    def test_lines_per_bucket_and_the_outcome(self) -> None:
        from s3balance.rebalancecli import approximate, describe_plan

        states = [backend("a"), backend("b", receives=False, note="over its class A budget"),
                  backend("c", capacity=None, note="capacity unknown (no max_size)"),
                  backend("d")]  # fmt: skip
        w = world(states, {"a": [10] * 60, "b": [10] * 20})
        planner, partial = plan(w, "spread", 0.05)
        text = describe_plan(planner.report(partial))
        lines = text.splitlines()
        self.assertEqual(lines[0].split()[:4], ["BUCKET", "CAPACITY", "BEFORE", "AFTER"])
        a = lines[1].split()
        self.assertEqual(a[:4], ["a", "1000", "B", "60.0%"])
        self.assertIn("over its class A budget; held out of the mean", lines[2])
        self.assertIn("-", lines[3].split()[1:4])
        self.assertIn("capacity unknown", lines[3])
        # b (20%, below the mean, cannot receive) is held out: a and d balance around 30%.
        self.assertTrue(lines[-1].startswith("spread (threshold 0.05, mean 30.0%): 25 moves"))
        self.assertTrue(lines[-1].endswith("balanced once moved"), lines[-1])
        self.assertEqual(approximate(0), "0 B")
        self.assertEqual(approximate(1536), "1.5 KiB")
        self.assertEqual(approximate(5 * 1024**3), "5.0 GiB")
        balanced, partial = plan(world([backend("a")], {"a": [10]}), "spread", 0.1)
        self.assertIn("balanced already", describe_plan(balanced.report(partial)))
