"""Where the copies of a replicated object go (distinct zones first, distinct backends always)
and in which order a read tries them (fastest healthy first, turns among equals)."""

from __future__ import annotations

import pytest

from s3balance.config import BucketConfig
from s3balance.configfile import ConfigError, parse_config
from s3balance.placement import LATENCY_TOLERANCE, order_reads, spread
from test.test_pool import Fixture, unique

pytestmark = pytest.mark.timeout(60)

ZONES = {"a1": "a", "a2": "a", "b1": "b", "c1": "c"}


def test_spread_takes_one_backend_per_zone_in_ranking_order() -> None:
    assert spread(["a1", "a2", "b1", "c1"], ZONES.__getitem__, 2) == ["a1", "b1"]
    assert spread(["a2", "c1", "a1", "b1"], ZONES.__getitem__, 3) == ["a2", "c1", "b1"]


def test_spread_falls_back_to_a_second_backend_of_a_zone_only_without_enough_zones() -> None:
    assert spread(["a1", "a2", "b1"], ZONES.__getitem__, 3) == ["a1", "a2", "b1"]
    assert spread(["a1", "a2"], ZONES.__getitem__, 2) == ["a1", "a2"]


def test_spread_gives_fewer_when_fewer_can_take_it() -> None:
    assert spread(["a1"], ZONES.__getitem__, 2) == ["a1"]
    assert spread([], ZONES.__getitem__, 1) == []


def test_reads_go_to_the_fastest_and_take_turns_among_equals() -> None:
    latency = {"slow": 0.2, "fast": 0.01, "also-fast": 0.01 + LATENCY_TOLERANCE / 2, "new": None}
    orders = [order_reads(["slow", "fast", "also-fast", "new"], latency.get, turn)
              for turn in range(3)]  # fmt: skip
    assert orders[0] == ["fast", "also-fast", "new", "slow"]
    assert orders[1] == ["also-fast", "new", "fast", "slow"]
    assert orders[2] == ["new", "fast", "also-fast", "slow"]


def test_the_pool_spreads_over_failure_domains_and_skips_what_failed() -> None:
    one, two, three = unique("svc1"), unique("svc1b"), unique("svc2")
    fx = Fixture(
        [
            BucketConfig(one, endpoint="http://10.0.0.1:9000"),
            BucketConfig(two, endpoint="http://10.0.0.1:9001"),
            BucketConfig(three, endpoint="http://10.0.0.2:9000", max_size=1000),
        ],
        strategy="round-robin",
    )
    assert fx.pool.zone_of(one) == fx.pool.zone_of(two) != fx.pool.zone_of(three)
    for key in ("k1", "k2", "k3"):
        chosen = fx.pool.choose_replicas("v", key, 10, 2)
        assert len(chosen) == 2 and three in chosen
    # Too large for the second zone: two backends of one zone are better than one copy.
    assert sorted(fx.pool.choose_replicas("v", "big", 5000, 2)) == sorted([one, two])
    assert fx.pool.choose_replicas("v", "k", 10, 2, exclude=[one, two]) == [three]


def test_the_pool_reads_healthy_replicas_only() -> None:
    up, down = unique("up"), unique("down")
    fx = Fixture([BucketConfig(up, path="up"), BucketConfig(down, path="down")])
    fx.health.mark_failure(down, "connection refused")
    assert fx.pool.read_order([down, up]) == [up]


def config(copies: int, **real: object) -> dict[str, object]:
    return {
        "buckets": [
            {"name": "one", "endpoint": "http://127.0.0.1:9000", **real},
            {"name": "two", "path": "two"},
            {"name": "files", "virtual": True, "replicas": copies},
        ]
    }


def test_replicas_and_zone_are_read_and_defaulted() -> None:
    parsed = parse_config(config(2, zone="rack-1"))
    by_name = {b.name: b for b in parsed.buckets}
    assert by_name["files"].replicas == 2 and by_name["one"].replicas == 1
    assert by_name["one"].failure_domain == "rack-1"
    assert by_name["two"].failure_domain == "path:two"
    assert BucketConfig("x", endpoint="https://s3.example.com:443").failure_domain == (
        "host:s3.example.com"
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (config(3), "buckets[2].replicas: 3 copies need 3 enabled real buckets, but only 2 are"),
        (
            config(2, enabled=False),
            "buckets[2].replicas: 2 copies need 2 enabled real buckets, but only 1 is enabled",
        ),
        (config(1, replicas=2), "buckets[0].replicas: 2 is a virtual bucket's setting"),
        (config(0), "buckets[2].replicas: 0 is out of range"),
    ],
)
def test_impossible_replica_counts_are_refused(data: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems


def test_a_virtual_bucket_has_no_zone() -> None:
    data = config(1)
    data["buckets"][2]["zone"] = "x"  # type: ignore[index]
    with pytest.raises(ConfigError, match="buckets\\[2\\].zone"):
        parse_config(data)
