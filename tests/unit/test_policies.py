"""Routing policies with a fake clock and seeded randomness, plus a small discrete-event
simulation (Poisson arrivals, each request holds its replica until now + latency)."""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter

import pytest

from gateway.policies import (
    POLICY_NAMES,
    TYPICAL_SAMPLES,
    LeastConnections,
    PeakEwma,
    Policy,
    PowerOfTwoChoices,
    RoundRobin,
    make_policy,
)
from gateway.replica import Replica


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def replicas(*ids: str, inflight: tuple[int, ...] = ()) -> list[Replica]:
    rs = [Replica(id=i, url=f"http://{i}") for i in ids]
    for r, n in zip(rs, inflight, strict=False):
        r.inflight = n
    return rs


def new(name: str, seed: int = 1, **params: float) -> tuple[Policy, Clock]:
    clock = Clock()
    return make_policy(name, clock=clock, rng=random.Random(seed), **params), clock


def simulate(
    name: str,
    latency: dict[str, float],
    *,
    failing: frozenset[str] = frozenset(),
    rate: float,
    n: int = 2000,
    seed: int = 7,
) -> Counter[str]:
    """Route ``n`` Poisson arrivals at ``rate``/s; count the picks per replica. Each request
    takes its replica's latency (+-20 % jitter); replicas in ``failing`` answer not-ok."""
    policy, clock = new(name, seed)
    pool = replicas(*latency)
    rng = random.Random(seed)
    done: list[tuple[float, int, Replica]] = []
    picks: Counter[str] = Counter()
    t = 0.0
    for i in range(n):
        t += rng.expovariate(rate)
        while done and done[0][0] <= t:
            clock.now, _, r = heapq.heappop(done)
            r.inflight -= 1
            policy.on_end(r, latency[r.id], r.id not in failing)
        clock.now = t
        chosen = policy.pick(pool)
        assert chosen is not None
        chosen.inflight += 1
        policy.on_start(chosen)
        picks[chosen.id] += 1
        heapq.heappush(done, (t + latency[chosen.id] * rng.uniform(0.8, 1.2), i, chosen))
    return picks


# -- all policies -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(POLICY_NAMES))
def test_no_candidates_gives_none_and_one_candidate_is_picked(name: str) -> None:
    policy, _ = new(name)
    assert policy.pick([]) is None
    (only,) = replicas("a", inflight=(5,))
    assert policy.pick([only]) is only


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("round_robin", RoundRobin),
        ("least_connections", LeastConnections),
        ("p2c", PowerOfTwoChoices),
        ("peak_ewma", PeakEwma),
    ],
)
def test_make_policy_by_name(name: str, cls: type) -> None:
    assert isinstance(new(name)[0], cls)


def test_unknown_policy_and_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        make_policy("fastest", clock=Clock(), rng=random.Random(0))
    with pytest.raises(ValueError, match="must be > 0"):
        new("peak_ewma", decay_s=0)
    assert {"round_robin", "least_connections", "p2c", "peak_ewma"} == POLICY_NAMES


# -- round robin, least connections, p2c ------------------------------------------------


def test_round_robin_cycles_evenly() -> None:
    policy, _ = new("round_robin")
    pool = replicas("a", "b", "c", inflight=(9, 0, 0))
    seq = [policy.pick(pool) for _ in range(30)]
    assert [r.id for r in seq[:6] if r] == ["a", "b", "c", "a", "b", "c"]
    assert Counter(r.id for r in seq if r) == {"a": 10, "b": 10, "c": 10}


@pytest.mark.parametrize(
    ("inflight", "expected"),
    [((3, 1, 2), "b"), ((0, 5, 5), "a"), ((4, 4, 0), "c"), ((7, 2, 9, 3), "b")],
)
def test_least_connections_picks_the_minimum(inflight: tuple[int, ...], expected: str) -> None:
    policy, _ = new("least_connections")
    pool = replicas("a", "b", "c", "d", inflight=inflight)[: len(inflight)]
    for _ in range(20):
        assert (r := policy.pick(pool)) is not None and r.id == expected


@pytest.mark.parametrize("name", ["least_connections", "p2c"])
def test_ties_are_spread_roughly_uniformly(name: str) -> None:
    policy, _ = new(name)
    pool = replicas("a", "b", "c", "d", inflight=(1, 0, 0, 0))
    counts = Counter(r.id for _ in range(3000) if (r := policy.pick(pool)))
    assert "a" not in counts
    assert all(850 <= counts[i] <= 1150 for i in "bcd"), counts


@pytest.mark.parametrize("inflight", [(0, 1), (1, 0), (3, 7), (12, 2)])
def test_p2c_never_picks_the_busier_of_two(inflight: tuple[int, int]) -> None:
    policy, _ = new("p2c")
    pool = replicas("a", "b", inflight=inflight)
    want = pool[0] if inflight[0] < inflight[1] else pool[1]
    assert all(policy.pick(pool) is want for _ in range(200))


def test_p2c_never_picks_a_unique_maximum() -> None:
    policy, _ = new("p2c")
    pool = replicas("a", "b", "c", "d", "e", inflight=(2, 9, 0, 4, 2))
    assert all((r := policy.pick(pool)) is not None and r.id != "b" for _ in range(500))


# -- simulations: one replica 5x slower, or failing instantly ---------------------------

FAST_SLOW = {"a": 0.05, "b": 0.05, "slow": 0.25}


@pytest.mark.parametrize(
    ("name", "rate", "low", "high"),
    [
        ("round_robin", 40.0, 0.30, 0.37),  # the baseline: a third, whatever the latency
        ("least_connections", 60.0, 0.0, 0.20),  # needs concurrency to see the slow one
        ("p2c", 60.0, 0.0, 0.25),
        ("peak_ewma", 40.0, 0.0, 0.10),
    ],
)
def test_share_of_a_five_times_slower_replica(
    name: str, rate: float, low: float, high: float
) -> None:
    picks = simulate(name, FAST_SLOW, rate=rate)
    share = picks["slow"] / picks.total()
    assert low <= share <= high, (share, picks)


@pytest.mark.parametrize("rate", [5.0, 40.0])
def test_peak_ewma_shuns_a_replica_that_fails_instantly(rate: float) -> None:
    latency = {"a": 0.05, "b": 0.05, "broken": 0.001}
    picks = simulate("peak_ewma", latency, failing=frozenset({"broken"}), rate=rate)
    assert picks["broken"] / picks.total() < 0.05, picks


# -- peak_ewma details -------------------------------------------------------------------


def test_new_replica_among_warm_ones_is_not_flooded() -> None:
    policy, clock = new("peak_ewma")
    warm = replicas("a", "b", "c")
    for t in range(10):
        clock.now = float(t)
        for r in warm:
            policy.on_end(r, 0.05, True)
    fresh = Replica(id="new", url="http://new")
    pool = [*warm, fresh]
    picks: Counter[str] = Counter()
    for _ in range(20):  # a burst: nothing completes, inflight builds up
        chosen = policy.pick(pool)
        assert chosen is not None
        chosen.inflight += 1
        policy.on_start(chosen)
        picks[chosen.id] += 1
    assert 1 <= picks["new"] <= 10, picks
    assert all(picks[i] >= 3 for i in "abc"), picks


@pytest.mark.parametrize(
    ("elapsed", "sample", "expected"),
    [
        (0.0, 0.01, 0.1),  # no time passed: a lower sample has no weight yet
        (10.0, 0.01, 0.1 * math.exp(-1) + 0.01 * (1 - math.exp(-1))),
        (100.0, 0.01, 0.01 + 0.09 * math.exp(-10)),
        (1.0, 0.5, 0.5),  # peak: a higher sample is taken at once
    ],
)
def test_ewma_moves_toward_new_samples_with_time(
    elapsed: float, sample: float, expected: float
) -> None:
    policy, clock = new("peak_ewma")
    assert isinstance(policy, PeakEwma)
    (r,) = replicas("a")
    assert policy.estimate(r) == pytest.approx(0.03)  # default_rtt_s before any sample
    policy.on_end(r, 0.1, True)
    clock.now = elapsed
    policy.on_end(r, sample, True)
    assert policy.estimate(r) == pytest.approx(expected)


@pytest.mark.parametrize(("slots", "busy_fast", "expected"), [
    (1, 1, "fast"),  # one slot: 10 ms x 2 still beats 50 ms
    (1, 5, "slow"),  # 10 ms x 6: the serial (in-flight + 1) factor
    (4, 3, "fast"),  # 4 slots, 3 busy: 10 ms x 1.75, the fast one answers in its usual time
])  # fmt: skip
def test_peak_ewma_counts_busy_slots_as_a_share_of_the_cap(
    slots: int, busy_fast: int, expected: str
) -> None:
    policy, _ = new("peak_ewma", slots=slots)
    fast, slow = replicas("fast", "slow")
    policy.on_end(fast, 0.01, True)
    policy.on_end(slow, 0.05, True)
    fast.inflight = busy_fast
    assert policy.pick([fast, slow]) is (fast if expected == "fast" else slow)


def test_an_unmeasured_replica_costs_the_pools_typical_latency() -> None:
    policy, _ = new("peak_ewma", slots=4)
    a, b, c, fresh = replicas("a", "b", "c", "fresh")
    for r, latency in ((a, 0.01), (b, 0.011), (c, 0.05)):
        policy.on_end(r, latency, True)
    a.inflight = b.inflight = c.inflight = 1
    assert policy.pick([a, b, c, fresh]) is fresh  # 11 ms x 1 beats 10 ms x 1.25
    fresh.inflight = 1
    assert policy.pick([a, b, c, fresh]) is a  # 10 ms x 1.25 beats 11 ms x 1.25


@pytest.mark.parametrize("first", [0.001, 0.01, 0.3])
def test_the_first_sample_replaces_the_default_outright(first: float) -> None:
    policy, _ = new("peak_ewma")
    assert isinstance(policy, PeakEwma)
    (r,) = replicas("a")
    policy.on_end(r, first, True)
    assert policy.estimate(r) == pytest.approx(first)  # a measurement, not a blend with 30 ms


@pytest.mark.parametrize(
    ("history", "failure_latency", "expected"),
    [
        ((), 0.001, 1.0),  # an instant failure costs penalty_s
        ((5.0,), 0.001, 10.0),  # ... or twice the usual latency where that is more
        ((0.05,), 3.0, 3.0),  # a slow failure costs at least what it took
        ((5.0, "fail", "fail"), 0.001, 10.0),  # failures in a burst do not compound
    ],
)
def test_failures_count_as_a_penalty_latency(
    history: tuple[float | str, ...], failure_latency: float, expected: float
) -> None:
    policy, _ = new("peak_ewma")
    assert isinstance(policy, PeakEwma)
    (r,) = replicas("a")
    for h in history:
        if h == "fail":
            policy.on_end(r, 0.001, False)
        else:
            assert isinstance(h, float)
            policy.on_end(r, h, True)
    policy.on_end(r, failure_latency, False)
    assert policy.estimate(r) == pytest.approx(expected)


def test_an_idle_penalised_replica_becomes_attractive_again() -> None:
    policy, clock = new("peak_ewma")
    assert isinstance(policy, PeakEwma)
    bad, good = replicas("bad", "good", inflight=(0, 1))
    policy.on_end(bad, 0.001, False)
    policy.on_end(good, 0.05, True)
    assert policy.pick([bad, good]) is good  # 1.0 x 1 against 0.05 x 2
    clock.now = 60.0  # no traffic to bad meanwhile: it relaxes toward the typical 0.05
    assert policy.estimate(bad) == pytest.approx(0.05 + 0.95 * math.exp(-6))
    policy.on_end(good, 0.05, True)  # good stays measured at 0.05
    assert policy.pick([bad, good]) is bad  # so bad gets probed again


def test_a_shunned_replica_is_probed_again_when_the_others_beat_the_default() -> None:
    """The relaxation target is the pool's typical latency, not ``default_rtt_s``: with
    every replica faster than that default, one that was slow once would never again
    look cheaper than the others."""
    policy, clock = new("peak_ewma", slots=4)
    slow_once, a, b = replicas("slow_once", "a", "b", inflight=(0, 2, 2))
    policy.on_end(slow_once, 0.05, True)
    for _ in range(TYPICAL_SAMPLES):
        policy.on_end(a, 0.01, True)
        policy.on_end(b, 0.01, True)
    assert policy.pick([slow_once, a, b]) is not slow_once
    for t in range(1, 61):  # a minute of traffic to a and b only
        clock.now = float(t)
        policy.on_end(a, 0.01, True)
        policy.on_end(b, 0.01, True)
    assert policy.pick([slow_once, a, b]) is slow_once  # about 13 ms against 10 ms x 1.5


def test_forget_drops_state() -> None:
    policy, _ = new("peak_ewma")
    assert isinstance(policy, PeakEwma)
    (r,) = replicas("a")
    policy.on_end(r, 2.0, True)
    assert policy.estimate(r) == pytest.approx(2.0)
    policy.forget("a")
    assert policy.estimate(r) == pytest.approx(2.0)  # unmeasured: the pool's typical latency
    policy.forget("never-seen")  # harmless
