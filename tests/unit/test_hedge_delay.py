"""The hedge decision: when an attempt gets a backup, from the pool's and its replica's heads."""

from __future__ import annotations

import random

import pytest

from gateway.dataplane.hedging import LATE_OVER_MEDIAN, REFRESH, WINDOW, Window, hedge_delay


def window(samples: list[float], size: int = WINDOW, refresh: int = REFRESH) -> Window:
    w = Window(size, refresh)
    for s in samples:
        w.add(s)
    return w


def test_no_delay_until_the_pools_tail_is_known() -> None:
    assert hedge_delay(window([0.01] * (REFRESH - 1)), None, 98.0, 0.0) is None
    assert hedge_delay(window([0.01] * REFRESH), None, 98.0, 0.0) is not None


def test_a_long_tail_sets_the_delay_at_the_percentile() -> None:
    tail = [0.1 * (i + 1) for i in range(8)]  # 0.1 .. 0.8 s
    pool = window([0.01] * (2 * REFRESH - len(tail)) + tail)
    # 128 samples: rank ceil(128 * 0.98) = 126 is the third slowest
    assert hedge_delay(pool, None, 98.0, 0.0) == pytest.approx(0.6)


def test_a_tight_distribution_sets_it_at_twice_the_median() -> None:
    pool = window([0.010 + i * 0.00001 for i in range(REFRESH)])  # p98 barely above the median
    expected = LATE_OVER_MEDIAN * (0.010 + (REFRESH // 2 - 1) * 0.00001)  # nearest rank
    assert hedge_delay(pool, None, 98.0, 0.0) == pytest.approx(expected)


def test_old_heads_leave_the_window() -> None:
    pool = window([1.0] * WINDOW)
    assert hedge_delay(pool, None, 98.0, 0.0) == 2.0
    for _ in range(WINDOW):
        pool.add(0.01)
    assert hedge_delay(pool, None, 98.0, 0.0) == 0.02


@pytest.mark.parametrize(
    ("pool", "own", "min_delay", "expected"),
    [
        # twice the replica's own p99 is over the pool's figure: a slower replica's
        # normal answers are not raced
        ([0.01] * 64, [0.05] * 32, 0.0, 0.1),
        # a replica faster than the pool: the pool's figure holds
        ([0.01] * 64, [0.002] * 32, 0.0, 0.02),
        ([0.01] * 64, [0.008] * 32, 0.0, 0.02),
        # a new replica (its own tail unknown): the pool's figure alone
        ([0.01] * 64, [0.05] * 31, 0.0, 0.02),
        # the floor
        ([0.001] * 64, [0.001] * 32, 0.005, 0.005),
    ],
)
def test_the_delay_is_past_both_the_pools_and_the_replicas_own_tail(
    pool: list[float], own: list[float], min_delay: float, expected: float
) -> None:
    delay = hedge_delay(window(pool), window(own, 256, 32), 98.0, min_delay)
    assert delay == pytest.approx(expected)


def test_a_healthy_heavy_tail_is_seldom_hedged() -> None:
    """Lognormal heads (sigma 1): with twice the replica's own p99 as a floor, about one
    answer in a thousand outlasts the delay, not the 2 % the pool's p98 alone races."""
    rng = random.Random(3)
    heads = [rng.lognormvariate(-3.9, 1.0) for _ in range(WINDOW)]
    pool, own = window(heads), window(heads[-256:], 256, 32)
    delay = hedge_delay(pool, own, 98.0, 0.0)
    assert delay is not None
    later = sum(rng.lognormvariate(-3.9, 1.0) > delay for _ in range(50000)) / 50000
    assert later < 0.003
