"""The paired rounds of ``bench/`` (``bench/paired.py``): the summary of per-round figures, and
the verdicts of issue 15 judged on their median with the spread beside it."""

from __future__ import annotations

import os
import subprocess

import pytest

from bench.paired import Pairs, base_first, describe_difference, describe_ratio, spread
from bench.procs import pinned_to
from bench.run import S3BALANCE
from bench.small import (
    S3BALANCE_2WORKERS,
    S3BALANCE_SIGV4,
    paired_lines,
    scaling_line,
    small_verdicts,
)
from test.test_bench_small import _entry

LABEL = "4 KiB x64"
SIGV4_TARGET = f"GET {LABEL}: SigV4 adds <= 100 µs CPU per request"
SCALING_TARGET = f"GET {LABEL}: req/s with 2 workers >= 1.4x one worker"


def test_spread_is_median_inclusive_quartiles_and_range() -> None:
    odd = spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert odd is not None
    assert (odd.median, odd.q1, odd.q3, odd.low, odd.high, odd.rounds) == (3, 2, 4, 1, 5, 5)
    even = spread([10.0, 40.0, 20.0, 30.0])
    assert even is not None
    assert (even.median, even.q1, even.q3, even.low, even.high) == (25, 17.5, 32.5, 10, 40)
    one = spread([7.0])
    assert one is not None and (one.median, one.q1, one.q3, one.low, one.high) == (7, 7, 7, 7, 7)
    assert spread([]) is None


def test_pairs_give_per_round_differences_and_ratios() -> None:
    rounds = Pairs("GET 4 KiB x8")
    for base, other in ((1000.0, 1050.0), (1200.0, 1150.0), (0.0, 10.0)):
        rounds.add(base, other)
    assert rounds.differences() == [50.0, -50.0, 10.0]
    assert rounds.ratios() == [1.05, 1150.0 / 1200.0]  # a round where the base did nothing: out
    assert [base_first(n) for n in range(4)] == [True, False, True, False]


def _sigv4_run(base: list[float], other: list[float]) -> dict[str, tuple[str, bool | None]]:
    # The medians of the table say +260 µs: judged on them, SigV4 would fail.
    measurements = {
        (f"GET {LABEL}", S3BALANCE): _entry(600.0, 440.0, 30.0),
        (f"GET {LABEL}", S3BALANCE_SIGV4): _entry(500.0, 700.0, 30.0),
    }
    rounds = Pairs("GET 4 KiB x8", base, other)
    judged = small_verdicts(measurements, LABEL, 64, S3BALANCE, {S3BALANCE_SIGV4: rounds})
    return {target: (measured, passed) for target, measured, passed in judged}


def test_sigv4_is_judged_on_the_median_of_paired_differences() -> None:
    # differences +50, +30, +500 (one noisy round), +20, +40: median +40
    judged = _sigv4_run([1000, 1200, 900, 1100, 1300], [1050, 1230, 1400, 1120, 1340])
    assert judged[SIGV4_TARGET] == (
        "+40 µs (IQR +30..+50, range +20..+500, 5 paired rounds)",
        True,
    )
    # differences +90, +150, +120: median +120
    judged = _sigv4_run([1000, 1000, 1000], [1090, 1150, 1120])
    assert judged[SIGV4_TARGET][1] is False
    assert judged[SIGV4_TARGET][0].startswith("+120 µs (IQR +105..+135")
    unpaired = small_verdicts(
        {
            (f"GET {LABEL}", S3BALANCE): _entry(600.0, 440.0, 30.0),
            (f"GET {LABEL}", S3BALANCE_SIGV4): _entry(500.0, 530.0, 30.0),
        },
        LABEL,
        64,
        S3BALANCE,
    )
    assert (SIGV4_TARGET, "+90 µs", True) in unpaired  # --pair-rounds 0: the medians' difference


def test_scaling_is_judged_on_the_median_of_paired_ratios() -> None:
    # The medians of the table say 1.50x; the rounds say 1.50x, 1.30x, 1.30x: median 1.30x.
    measurements = {
        (f"GET {LABEL}", S3BALANCE): _entry(1000.0, 400.0, 10.0),
        (f"GET {LABEL}", S3BALANCE_2WORKERS): _entry(1500.0, 400.0, 10.0),
        (f"PUT {LABEL}", S3BALANCE): _entry(500.0, 900.0, 10.0),
        (f"PUT {LABEL}", S3BALANCE_2WORKERS): _entry(400.0, 900.0, 10.0),
    }
    paired = {S3BALANCE_2WORKERS: Pairs(f"GET {LABEL}", [100, 200, 100], [150, 260, 130])}
    judged = {t: (m, p) for t, m, p in small_verdicts(measurements, LABEL, 64, S3BALANCE, paired)}
    assert judged[SCALING_TARGET] == (
        "1.30x (IQR 1.30-1.40, range 1.30-1.50, 3 paired rounds)",
        False,
    )
    line = scaling_line(measurements, LABEL, S3BALANCE, paired)
    assert line.endswith("GET 1.30x (IQR 1.30-1.40, range 1.30-1.50, 3 paired rounds), PUT 0.80x")
    listed = paired_lines(paired, S3BALANCE)
    assert listed == [
        f"  GET {LABEL}, back to back, the order alternating: {S3BALANCE_2WORKERS} req/s / "
        f"{S3BALANCE} req/s: 1.30x (IQR 1.30-1.40, range 1.30-1.50, 3 paired rounds)"
    ]


def test_describe_shows_the_median_and_how_far_to_trust_it() -> None:
    found = spread([-20.0, 10.0, 30.0])
    assert found is not None
    assert describe_difference(found) == "+10 µs (IQR -5..+20, range -20..+30, 3 paired rounds)"
    ratio = spread([1.5])
    assert ratio is not None
    assert describe_ratio(ratio) == "1.50x (IQR 1.50-1.50, range 1.50-1.50, 1 paired rounds)"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_pinned_to_one_core_inside_the_block_only() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        before = os.sched_getaffinity(child.pid)
        core = max(before)
        with pinned_to([child.pid], core):
            assert os.sched_getaffinity(child.pid) == {core}
        assert os.sched_getaffinity(child.pid) == before
    finally:
        child.kill()
        child.wait()
