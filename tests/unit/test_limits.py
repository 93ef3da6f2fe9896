"""The learnt concurrency limit, with a fake clock: answers whose latency grows past a
replica's ``slots`` as ``k / slots`` for ``k`` requests in flight (FIFO inside it)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from gateway.dataplane.limits import (
    FORGET_S,
    INITIAL,
    MIN_SAMPLES,
    RAISE_S,
    ConcurrencyLimit,
    level_of,
)


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
    """``n`` answers at ``per_s``, each with a demand of 1..``upto`` requests in flight,
    of which the limit lets through at most its value; returns the clock after the last."""
    rng = random.Random(seed)
    now = start
    for _ in range(n):
        now += 1.0 / per_s
        k = min(rng.randint(1, upto), limit.value)
        noise = math.exp(rng.gauss(0.0, sigma)) if sigma else 1.0
        limit.record(service_s * max(1.0, k / slots) * noise, k, now)
    return now


@pytest.mark.parametrize(("k", "level"), [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (7, 2),
                                          (8, 3), (100, 6), (10**6, 9)])  # fmt: skip
def test_levels_double(k: int, level: int) -> None:
    assert level_of(k) == level


def test_a_new_replica_starts_low_and_doubles_on_evidence_while_its_limit_is_reached() -> None:
    limit = ConcurrencyLimit(ceiling=64)
    assert limit.value == INITIAL
    for i in range(100):  # light load: never more than 2 in flight
        limit.record(0.02, 1 + i % 2, i * 0.01)
    assert limit.value == INITIAL
    t = 1.0
    for _ in range(int(MIN_SAMPLES) - 1):  # at the limit, but its level not yet known
        t += 0.01
        limit.record(0.02, INITIAL, t)
    assert limit.value == INITIAL
    limit.record(0.02, INITIAL, t + 0.01)  # known, and no slower than below: double
    assert limit.value == 2 * INITIAL
    assert ConcurrencyLimit(ceiling=2).value == 2


def test_held_at_its_limit_a_replica_is_not_cut_below_what_it_showed() -> None:
    """Every answer comes back with the limit reached, one level at a time: the next
    level is slower in proportion, which says the knee is at or below the level held,
    not where. The limit holds there (no cut into capacity on a guess) and comes down to
    the knee once the demand varies and a lower level shows it."""
    limit = ConcurrencyLimit(ceiling=64)
    now = 0.0
    for _ in range(400):
        now += 0.005
        k = limit.value
        limit.record(0.02 * k, k, now)  # one slot: k in flight take k times as long
    assert limit.value == INITIAL
    feed(limit, slots=1, upto=64, start=now)
    assert limit.value == 2  # one slot and its headroom


def test_a_one_slot_replica_keeps_a_request_waiting_through_exponential_noise() -> None:
    """Exponential service times on one slot: k in flight take the sum of k draws, whose
    mean of logs grows faster than log k (2 in flight look 2.7x one alone). The knee
    then reads under 1, which must not take the limit to 1: the slot would idle for
    every round trip through the gateway."""
    rng = random.Random(3)
    limit = ConcurrencyLimit(ceiling=64)
    now, lowest = 0.0, []
    for i in range(6000):
        now += 0.005
        k = min(rng.randint(1, 4), limit.value)
        limit.record(sum(rng.expovariate(50.0) for _ in range(k)), k, now)
        if i >= 1000:
            lowest.append(limit.value)
    assert min(lowest) == 2


@pytest.mark.parametrize(
    ("slots", "low", "high"),
    [(1, 1, 2), (4, 4, 8), (16, 16, 32)],  # the knee, with its headroom (1.5x, rounded up)
)
def test_the_limit_finds_the_knee(slots: int, low: int, high: int) -> None:
    limit = ConcurrencyLimit(ceiling=64)
    feed(limit, slots=slots, upto=64)
    assert low <= limit.value <= high


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.5])
def test_a_heavy_tail_without_congestion_reaches_the_ceiling(sigma: float) -> None:
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
    assert limit.value <= 4
    now = feed(limit, slots=32, upto=64, start=now, n=int(2 * FORGET_S * 200))
    assert limit.value >= 24
    # and it never jumped straight from the old knee to the ceiling
    fresh = ConcurrencyLimit(ceiling=64)
    t = feed(fresh, slots=2, upto=64)
    seen = []
    for _ in range(int(2 * FORGET_S / RAISE_S)):
        t = feed(fresh, slots=32, upto=64, start=t, n=int(RAISE_S * 200))
        seen.append(fresh.value)
    assert all(b <= 2 * a for a, b in itertools.pairwise(seen))


def test_cheap_requests_of_another_kind_do_not_cut_the_limit() -> None:
    """Health checks through the pool, one at a time in 0.5 ms, outnumber the model's
    calls, 10 ms each beside one another: compared with those checks the calls look
    congested at 2-7 in flight, but only like is compared with like."""
    limit = ConcurrencyLimit(ceiling=64)
    now = 0.0
    for i in range(4000):
        now += 0.001
        if i % 3:
            limit.record(0.0005, 1, now, "/health")
        else:
            limit.record(0.01, min(2 + i % 6, limit.value), now, "/predict")
    assert limit.value == INITIAL  # compared across kinds, the calls cut it to 1


def test_the_floor_and_ceiling_hold() -> None:
    limit = ConcurrencyLimit(ceiling=8, floor=2)
    feed(limit, slots=1, upto=8)
    assert limit.value == 2
    capped = ConcurrencyLimit(ceiling=8)
    feed(capped, slots=64, upto=64)
    assert capped.value == 8
    capped.set_ceiling(4)  # a reload lowers the ceiling: the limit follows at once
    assert capped.value == 4
