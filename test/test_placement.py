"""Placement strategies: each ranks every eligible backend, and each keeps its promise
(even turns, most free space first, weight-proportional shares, minimal movement on the ring)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3balance.config import STRATEGIES
from s3balance.placement import (
    VNODES_PER_WEIGHT,
    Candidate,
    ConsistentHashStrategy,
    IPlacementStrategy,
    make_strategy,
)

pytestmark = pytest.mark.timeout(120)


def candidate(
    name: str, weight: int = 1, used: int = 0, max_size: int | None = None, free: int | None = None
) -> Candidate:
    return Candidate(name=name, weight=weight, used_bytes=used, max_size=max_size, free_bytes=free)


names = st.text(alphabet="abcdefghijklmnop0123456789-", min_size=1, max_size=12)
candidate_sets = st.lists(
    st.builds(
        candidate,
        name=names,
        weight=st.integers(min_value=0, max_value=5),
        used=st.integers(min_value=0, max_value=10**12),
        free=st.one_of(st.none(), st.integers(min_value=0, max_value=10**12)),
    ),
    min_size=0,
    max_size=8,
    unique_by=lambda c: c.name,
)
keys = st.text(min_size=0, max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    candidates=candidate_sets,
    strategy_name=st.sampled_from(STRATEGIES),
    key=keys,
    seed=st.integers(0, 2**32),
)
def test_every_strategy_ranks_a_permutation_of_the_candidates(
    candidates: list[Candidate], strategy_name: str, key: str, seed: int
) -> None:
    strategy = make_strategy(strategy_name, random.Random(seed))
    assert IPlacementStrategy.providedBy(strategy)
    assert strategy.name == strategy_name
    for _ in range(3):  # stateful strategies keep the promise call after call
        ranked = strategy.rank(candidates, "bucket", key, 1024)
        expected = {c.name for c in candidates}
        if strategy_name == "weighted":
            expected = {c.name for c in candidates if c.weight > 0}
        assert len(ranked) == len(set(ranked))
        assert set(ranked) == expected


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="least-space"):
        make_strategy("fastest")


# -- round-robin ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(count=st.integers(1, 7), rounds=st.integers(1, 5))
def test_round_robin_gives_every_backend_the_same_number_of_turns(count: int, rounds: int) -> None:
    strategy = make_strategy("round-robin")
    candidates = [candidate(f"b{i}") for i in range(count)]
    random.Random(count).shuffle(candidates)  # input order must not matter
    firsts = Counter(strategy.rank(candidates, "v", "k", 1)[0] for _ in range(count * rounds))
    assert set(firsts.values()) == {rounds}
    assert len(firsts) == count


def test_round_robin_continues_after_the_last_choice_when_the_set_changes() -> None:
    strategy = make_strategy("round-robin")
    full = [candidate("a"), candidate("b"), candidate("c"), candidate("d")]
    assert strategy.rank(full, "v", "k", 1) == ["a", "b", "c", "d"]
    assert strategy.rank(full, "v", "k", 1) == ["b", "c", "d", "a"]
    # c becomes unavailable: d is next, not a repeat of b nor a skip to a.
    without_c = [c for c in full if c.name != "c"]
    assert strategy.rank(without_c, "v", "k", 1)[0] == "d"
    # c is back: the turn goes on from d.
    assert strategy.rank(full, "v", "k", 1) == ["a", "b", "c", "d"]
    assert strategy.rank(full, "v", "k", 1)[0] == "b"


# -- least-space ---------------------------------------------------------------------------


def test_least_space_prefers_most_free_then_unlimited_first() -> None:
    strategy = make_strategy("least-space")
    ranked = strategy.rank(
        [
            candidate("small", free=10, max_size=100, used=90),
            candidate("big", free=1000, max_size=2000, used=1000),
            candidate("unlimited-busy", used=500),
            candidate("unlimited-idle", used=5),
            candidate("tie-b", free=10, max_size=100, used=90),
        ],
        "v",
        "k",
        1,
    )
    assert ranked == ["unlimited-idle", "unlimited-busy", "big", "small", "tie-b"]


# -- weighted ------------------------------------------------------------------------------


def test_weighted_shares_follow_the_weights() -> None:
    strategy = make_strategy("weighted", random.Random(1234))
    candidates = [candidate("one", 1), candidate("three", 3), candidate("six", 6)]
    samples = 6000
    firsts = Counter(strategy.rank(candidates, "v", "k", 1)[0] for _ in range(samples))
    for name, weight in (("one", 1), ("three", 3), ("six", 6)):
        assert abs(firsts[name] / samples - weight / 10) < 0.03, firsts


def test_weighted_never_picks_weight_zero() -> None:
    strategy = make_strategy("weighted", random.Random(7))
    candidates = [candidate("drained", 0), candidate("live", 1)]
    for _ in range(200):
        assert strategy.rank(candidates, "v", "k", 1) == ["live"]
    assert strategy.rank([candidate("drained", 0)], "v", "k", 1) == []


def test_weighted_fallbacks_are_drawn_by_weight_too() -> None:
    strategy = make_strategy("weighted", random.Random(99))
    candidates = [candidate("heavy", 8), candidate("light", 1), candidate("mid", 3)]
    seconds = Counter()
    samples = 4000
    for _ in range(samples):
        ranked = strategy.rank(candidates, "v", "k", 1)
        if ranked[0] == "heavy":
            seconds[ranked[1]] += 1
    # Once "heavy" is out, "mid" should come second three times as often as "light".
    ratio = seconds["mid"] / max(1, seconds["light"])
    assert 2.3 < ratio < 3.9, seconds


# -- consistent-hash -----------------------------------------------------------------------


def owners(strategy: IPlacementStrategy, candidates: list[Candidate], keys: list[str]) -> dict:
    return {key: strategy.rank(candidates, "photos", key, 1)[0] for key in keys}


KEYS = [f"user{i}/img{i * 7919 % 10007}.jpg" for i in range(3000)]


@settings(max_examples=15, deadline=None)
@given(count=st.integers(2, 8), newcomer_weight=st.integers(1, 3))
def test_consistent_hash_adding_a_backend_moves_only_its_share(
    count: int, newcomer_weight: int
) -> None:
    before_set = [candidate(f"node-{i}") for i in range(count)]
    after_set = before_set + [candidate("newcomer", newcomer_weight)]
    before = owners(ConsistentHashStrategy(), before_set, KEYS)
    after = owners(ConsistentHashStrategy(), after_set, KEYS)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == "newcomer" for key in moved)
    expected_share = newcomer_weight / (count + newcomer_weight)
    assert abs(len(moved) / len(KEYS) - expected_share) < 0.35 * expected_share + 0.02


@settings(max_examples=15, deadline=None)
@given(count=st.integers(2, 8), data=st.data())
def test_consistent_hash_removing_a_backend_moves_only_its_keys(count: int, data) -> None:
    full = [candidate(f"node-{i}") for i in range(count)]
    gone = data.draw(st.sampled_from([c.name for c in full]))
    before = owners(ConsistentHashStrategy(), full, KEYS)
    after = owners(ConsistentHashStrategy(), [c for c in full if c.name != gone], KEYS)
    for key in KEYS:
        if before[key] != gone:
            assert after[key] == before[key]
        else:
            assert after[key] != gone


def test_consistent_hash_fallback_is_where_the_key_goes_when_the_first_is_gone() -> None:
    strategy = ConsistentHashStrategy()
    full = [candidate(f"node-{i}") for i in range(5)]
    for key in KEYS[:300]:
        ranked = strategy.rank(full, "photos", key, 1)
        without_first = [c for c in full if c.name != ranked[0]]
        assert strategy.rank(without_first, "photos", key, 1) == ranked[1:]


def test_consistent_hash_is_stable_across_instances_and_weight_proportional() -> None:
    candidates = [candidate("a", 1), candidate("b", 1), candidate("c", 2)]
    first = owners(ConsistentHashStrategy(), candidates, KEYS)
    second = owners(ConsistentHashStrategy(), list(reversed(candidates)), KEYS)
    assert first == second
    shares = Counter(first.values())
    assert abs(shares["c"] / len(KEYS) - 0.5) < 0.1, shares
    assert abs(shares["a"] / len(KEYS) - 0.25) < 0.08, shares
    assert VNODES_PER_WEIGHT >= 100


def test_consistent_hash_puts_weight_zero_last() -> None:
    strategy = ConsistentHashStrategy()
    ranked = strategy.rank([candidate("zero", 0), candidate("a"), candidate("b")], "v", "k", 1)
    assert ranked[-1] == "zero"
    assert set(ranked[:2]) == {"a", "b"}


def test_consistent_hash_depends_on_the_bucket_too() -> None:
    strategy = ConsistentHashStrategy()
    candidates = [candidate(f"node-{i}") for i in range(4)]
    differing = sum(
        strategy.rank(candidates, "one", key, 1)[0] != strategy.rank(candidates, "two", key, 1)[0]
        for key in KEYS[:400]
    )
    assert differing > 200
