"""The learnt concurrency limit, with a fake clock: answers whose latency grows past a
replica's ``slots`` as ``k / slots`` for ``k`` requests in flight (FIFO inside it)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from gateway.limits import AGE_S, RAISE_S, ConcurrencyLimit, level_of


def feed(
    limit: ConcurrencyLimit,
    *,
    slots: int,
    upto: int,
    n: int = 2000,
    start: float = 0.0,
    per_s: float = 200.0,
    service_s: float = 0.02,
    sigma: float = 0.0,
    seed: int = 1,
) -> float:
    """``n`` answers at ``per_s``, each with 1..min(upto, limit) in flight; returns the
    clock after the last."""
    rng = random.Random(seed)
    now = start
    for _ in range(n):
        now += 1.0 / per_s
        k = rng.randint(1, min(upto, limit.value))
        noise = math.exp(rng.gauss(0.0, sigma)) if sigma else 1.0
        limit.record(service_s * max(1.0, k / slots) * noise, k, now)
    return now


@pytest.mark.parametrize(("k", "level"), [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (7, 2),
                                          (8, 3), (100, 6), (10**6, 9)])  # fmt: skip
def test_levels_double(k: int, level: int) -> None:
    assert level_of(k) == level


def test_without_evidence_the_limit_is_the_ceiling() -> None:
    limit = ConcurrencyLimit(ceiling=64)
    assert limit.value == 64
    limit.record(0.02, 1, 0.0)
    assert limit.value == 64


@pytest.mark.parametrize(
    ("slots", "low", "high"),
    [(1, 1, 2), (4, 3, 6), (16, 12, 24)],  # the knee, within the 1.5x that counts as congested
)
def test_the_limit_finds_the_knee(slots: int, low: int, high: int) -> None:
    limit = ConcurrencyLimit(ceiling=64)
    feed(limit, slots=slots, upto=64)
    assert low <= limit.value <= high


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.5])
def test_a_heavy_tail_without_congestion_keeps_the_ceiling(sigma: float) -> None:
    """Noise is not evidence: 64 slots, answers lognormal at every in-flight level."""
    limit = ConcurrencyLimit(ceiling=64)
    feed(limit, slots=64, upto=64, n=5000, sigma=sigma)
    assert limit.value == 64


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_the_knee_shows_through_a_heavy_tail(sigma: float) -> None:
    limit = ConcurrencyLimit(ceiling=64)
    feed(limit, slots=4, upto=64, n=5000, sigma=sigma)
    assert 2 <= limit.value <= 8


def test_a_replica_that_slows_down_keeps_its_limit() -> None:
    limit = ConcurrencyLimit(ceiling=64)
    now = feed(limit, slots=4, upto=64)
    before = limit.value
    feed(limit, slots=4, upto=64, start=now, service_s=0.1)  # 5x slower at every level
    assert abs(limit.value - before) <= 2


def test_a_replica_that_batches_less_is_limited_at_once() -> None:
    limit = ConcurrencyLimit(ceiling=64)
    now = feed(limit, slots=16, upto=64)
    assert limit.value >= 12
    feed(limit, slots=2, upto=64, start=now, n=400)  # two seconds of the smaller batch
    assert limit.value <= 4


def test_forgotten_congestion_lets_the_limit_rise_again_by_doubling() -> None:
    """A replica replaced by one with more slots: once the old congestion has aged out,
    the limit doubles at most every RAISE_S and settles at the new knee."""
    limit = ConcurrencyLimit(ceiling=64)
    now = feed(limit, slots=2, upto=64)
    assert limit.value <= 3
    now = feed(limit, slots=32, upto=64, start=now, n=int(2 * AGE_S * 200))
    assert limit.value >= 24
    # and it never jumped straight from the old knee to the ceiling
    fresh = ConcurrencyLimit(ceiling=64)
    t = feed(fresh, slots=2, upto=64)
    seen = []
    for _ in range(int(2 * AGE_S / RAISE_S)):
        t = feed(fresh, slots=32, upto=64, start=t, n=int(RAISE_S * 200))
        seen.append(fresh.value)
    assert all(b <= 2 * a for a, b in itertools.pairwise(seen))


def test_the_floor_and_ceiling_hold() -> None:
    limit = ConcurrencyLimit(ceiling=8, floor=2)
    feed(limit, slots=1, upto=8)
    assert limit.value == 2
    capped = ConcurrencyLimit(ceiling=8)
    feed(capped, slots=64, upto=64)
    assert capped.value == 8
    capped.set_ceiling(4)  # a reload lowers the ceiling: the limit follows at once
    assert capped.value == 4
