"""Routing policies with a fake clock and seeded randomness, plus a small discrete-event
simulation (Poisson arrivals, each request holds its replica until now + latency)."""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter

import pytest

from gateway.config import POLICY_NAMES
from gateway.dataplane.policies import (
    POLICIES,
    LeastConnections,
    PeakEwma,
    Policy,
    PowerOfTwoChoices,
    PrefixAffinity,
    RoundRobin,
    make_policy,
)
from gateway.dataplane.policies.peak_ewma import ALPHA
from gateway.dataplane.replica import Replica
from tests.fakes import Clock


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
    sigma: float | None = None,
    cap: int = 1,
) -> Counter[str]:
    """Route ``n`` Poisson arrivals at ``rate``/s; count the picks per replica. Each request
    takes its replica's latency (+-20 % jitter, or lognormal with ``sigma`` and that mean);
    replicas in ``failing`` answer not-ok; every replica's limit is ``cap``."""
    policy, clock = new(name, seed)
    pool = replicas(*latency)
    for r in pool:
        r.cap, r.slots = cap, cap
    rng = random.Random(seed)
    done: list[tuple[float, int, Replica, float]] = []
    picks: Counter[str] = Counter()
    t = 0.0
    for i in range(n):
        t += rng.expovariate(rate)
        while done and done[0][0] <= t:
            clock.now, _, r, took_s = heapq.heappop(done)
            r.inflight -= 1
            policy.on_end(r, took_s, r.id not in failing)
        clock.now = t
        chosen = policy.pick(pool)
        assert chosen is not None
        chosen.inflight += 1
        policy.on_start(chosen)
        picks[chosen.id] += 1
        mean = latency[chosen.id]
        if sigma is None:
            took_s = mean * rng.uniform(0.8, 1.2)
        else:
            took_s = rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)
        heapq.heappush(done, (t + took_s, i, chosen, took_s))
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
        ("prefix_affinity", PrefixAffinity),
    ],
)
def test_make_policy_by_name(name: str, cls: type) -> None:
    assert isinstance(new(name)[0], cls)


def test_every_name_the_config_accepts_has_a_policy() -> None:
    assert set(POLICIES) == POLICY_NAMES


def test_unknown_policy_and_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        make_policy("fastest", clock=Clock(), rng=random.Random(0))
    with pytest.raises(ValueError, match="must be > 0"):
        new("peak_ewma", relax_s=0)
    assert {"round_robin", "least_connections", "p2c", "peak_ewma", "prefix_affinity"} == (
        POLICY_NAMES
    )


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


@pytest.mark.parametrize(
    ("free", "full", "ahead", "expected"),
    [
        (3, 2, 0, None),  # a full replica has fewer in flight: wait for it
        (2, 2, 0, "free"),  # as many: take the free one
        (3, 2, 4, "free"),  # the queue ahead makes the full one busier than the free one
    ],
)
def test_least_connections_waits_for_a_full_replica_with_fewer_in_flight(
    free: int, full: int, ahead: int, expected: str | None
) -> None:
    """Learnt limits differ: a replica whose limit is still high must not take every
    request the others' lower limits turn away."""
    policy, _ = new("least_connections")
    spare, capped = replicas("free", "capped", inflight=(free, full))
    chosen = policy.pick([spare], full=[capped], ahead=ahead)
    assert (chosen.id if chosen else None) == expected


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


def peak(**params: float) -> tuple[PeakEwma, Clock]:
    policy, clock = new("peak_ewma", **params)
    assert isinstance(policy, PeakEwma)
    return policy, clock


def test_new_replica_among_warm_ones_is_not_flooded() -> None:
    policy, clock = peak()
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
    ("samples", "expected"),
    [
        ((0.1,), 0.1),  # the first answer replaces the default outright
        ((0.1, 0.1), 0.1),
        ((0.1, 0.2), (0.1 * 0.2) ** 0.5),  # the first answers: their geometric mean
        ((0.1, 0.05), (0.1 * 0.05) ** 0.5),
        ((0.1,) * 20 + (10.0,), 0.1 * 100**ALPHA),  # then a share: one 100x slower, 1.33x
    ],
)
def test_each_answer_moves_the_estimate_by_a_share(
    samples: tuple[float, ...], expected: float
) -> None:
    policy, _ = peak()
    (r,) = replicas("a")
    assert policy.estimate(r) == pytest.approx(0.03)  # default_rtt_s before any sample
    for latency in samples:
        policy.on_end(r, latency, True)
    assert policy.estimate(r) == pytest.approx(expected)


@pytest.mark.parametrize(("cap", "busy_fast", "expected"), [
    (1, 1, "fast"),  # one slot: 10 ms x 2 still beats 50 ms
    (1, 5, "slow"),  # 10 ms x 6: the serial (in-flight + 1) factor
    (4, 3, "fast"),  # 4 slots, 3 busy: 10 ms x 1.75, the fast one answers in its usual time
    (64, 30, "fast"),  # a high limit: load counts for little against a 5x gap
])  # fmt: skip
def test_busy_slots_count_as_a_share_of_the_replicas_limit(
    cap: int, busy_fast: int, expected: str
) -> None:
    policy, _ = peak()
    fast, slow = replicas("fast", "slow")
    fast.cap = slow.cap = fast.slots = slow.slots = cap
    for i in range(32):  # enough answers for a 5x gap to be more than noise
        policy.on_end(fast, 0.01 * (1 + i % 2 / 10), True)
        policy.on_end(slow, 0.05 * (1 + i % 2 / 10), True)
    fast.inflight = busy_fast
    assert policy.pick([fast, slow]) is (fast if expected == "fast" else slow)


@pytest.mark.parametrize(
    ("sigma", "latencies", "tie"),
    [
        # estimates within the noise of a heavy tail tie: load decides
        (1.0, (0.020, 0.026), True),
        (0.5, (0.020, 0.024), True),
        # a 5x gap is not noise, even with a heavy tail
        (1.0, (0.020, 0.100), False),
        # a tight distribution: a 30 % gap is real
        (0.01, (0.020, 0.026), False),
    ],
)
def test_estimates_closer_than_their_noise_tie(
    sigma: float, latencies: tuple[float, float], tie: bool
) -> None:
    """The herding rule. Each replica has seen 64 answers whose log latency spreads by
    ``sigma`` around its own level; the busier replica (one more in flight) is picked
    only if the other's estimate is clearly worse."""
    policy, _ = peak()
    a, b = replicas("a", "b")
    a.cap = b.cap = a.slots = b.slots = 8
    rng = random.Random(5)
    for _ in range(64):
        for r, level in ((a, latencies[0]), (b, latencies[1])):
            z = max(-2.0, min(2.0, rng.gauss(0, 1)))
            policy.on_end(r, level * math.exp(sigma * z), True)
    est_a, est_b = policy.estimate(a), policy.estimate(b)
    slower, faster = (a, b) if est_a > est_b else (b, a)
    faster.inflight = 1  # the faster estimate but one more request on it
    assert policy.pick([a, b]) is (slower if tie else faster)


def test_like_replicas_with_a_heavy_tail_share_the_load_evenly() -> None:
    """Three equal replicas, lognormal answers (sigma 1): no replica is starved because
    its recent answers drew long (the herding the issue measured: 39 / 40 / 16 %)."""
    latency = {"a": 0.02, "b": 0.02, "c": 0.02}
    picks = simulate("peak_ewma", latency, rate=100.0, n=6000, sigma=1.0, cap=4)
    shares = [picks[i] / picks.total() for i in "abc"]
    assert all(0.28 <= s <= 0.39 for s in shares), picks


def test_a_slower_replica_stays_avoided_with_a_heavy_tail() -> None:
    latency = {"a": 0.02, "b": 0.02, "slow": 0.1}
    picks = simulate("peak_ewma", latency, rate=100.0, n=6000, sigma=0.5, cap=4)
    assert picks["slow"] / picks.total() < 0.05, picks


@pytest.mark.parametrize(
    ("slow_free", "ahead", "expected"),
    [
        (5.0, 0, None),  # a 5x slower replica with room: better wait for a fast one
        (1.2, 0, "slow"),  # barely slower: take the free slot
        (5.0, 40, "slow"),  # a long queue ahead makes the slow one worth it
    ],
)
def test_waiting_for_a_full_replica_can_beat_a_slow_free_one(
    slow_free: float, ahead: int, expected: str | None
) -> None:
    policy, _ = peak()
    fast, slow = replicas("fast", "slow")
    fast.cap = slow.cap = fast.inflight = 4
    fast.slots = slow.slots = 4
    slow.inflight = 0
    for i in range(32):
        policy.on_end(fast, 0.01 * (1 + i % 2 / 10), True)
        policy.on_end(slow, 0.01 * slow_free * (1 + i % 2 / 10), True)
    chosen = policy.pick([slow], full=[fast], ahead=ahead)
    assert (chosen.id if chosen else None) == expected


def test_an_unmeasured_replica_costs_the_pools_typical_latency() -> None:
    policy, _ = peak()
    a, b, fresh = replicas("a", "b", "fresh")
    a.cap = b.cap = fresh.cap = 4
    a.slots = b.slots = fresh.slots = 4
    for r, latency in ((a, 0.05), (b, 0.05)):
        policy.on_end(r, latency, True)
    assert policy.estimate(fresh) == pytest.approx(0.05)
    a.inflight = b.inflight = 1
    assert policy.pick([a, b, fresh]) is fresh  # idle at the typical latency


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
    policy, _ = peak()
    (r,) = replicas("a")
    for h in history:
        if h == "fail":
            policy.on_end(r, 0.001, False)
        else:
            assert isinstance(h, float)
            policy.on_end(r, h, True)
    policy.on_end(r, failure_latency, False)
    assert policy.estimate(r) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("idle_s", "picked"),
    [(0.5, "good"), (10.0, "bad")],  # relax_s 2: shunned, then tried again within seconds
)
def test_an_idle_penalised_replica_is_tried_again_within_seconds(
    idle_s: float, picked: str
) -> None:
    policy, clock = peak()
    bad, good = replicas("bad", "good", inflight=(0, 1))
    bad.cap = good.cap = bad.slots = good.slots = 4
    policy.on_end(good, 0.05, True)
    policy.on_end(bad, 0.001, False)
    clock.now = idle_s  # no answer from bad meanwhile: it relaxes toward the typical 0.05
    policy.on_end(good, 0.05, True)
    assert policy.pick([bad, good]).id == picked  # type: ignore[union-attr]


def test_a_shunned_replica_is_tried_again_with_one_request_at_a_time() -> None:
    """``hetero``: a replica 5x slower is re-measured once its estimate has relaxed, but
    while that request is on it, it keeps its estimate: the requests right behind go
    to the fast ones, not in a burst to the slow one."""
    policy, clock = peak()
    slow, fast = replicas("slow", "fast")
    slow.cap = fast.cap = slow.slots = fast.slots = 4
    for _ in range(64):
        policy.on_end(slow, 0.05, True)
        policy.on_end(fast, 0.01, True)
    clock.now = 10.0  # the slow one has not answered since: relaxed toward the typical
    policy.on_end(fast, 0.01, True)
    fast.inflight = 1
    first = policy.pick([slow, fast])
    assert first is slow
    slow.inflight = 1
    assert [policy.pick([slow, fast]) for _ in range(5)] == [fast] * 5


def test_a_recovered_replica_gets_its_share_back_within_seconds() -> None:
    """``degrade``'s last phase: a replica that was 5x slower answers at its old pace
    again; within a few seconds it is picked as often as the others."""
    latency = {"a": 0.02, "b": 0.02, "c": 0.02}
    policy, clock = peak()
    pool = replicas(*latency)
    for r in pool:
        r.cap, r.slots = 4, 4
    for _ in range(64):
        for r in pool:
            policy.on_end(r, 0.1 if r.id == "a" else 0.02, True)
    rng = random.Random(2)
    done: list[tuple[float, int, Replica]] = []
    picks: Counter[str] = Counter()
    t = 0.0
    for i in range(3000):  # 30 s at 100/s, every replica at its normal pace now
        t += rng.expovariate(100.0)
        while done and done[0][0] <= t:
            clock.now, _, r = heapq.heappop(done)
            r.inflight -= 1
            policy.on_end(r, 0.02, True)
        clock.now = t
        chosen = policy.pick(pool)
        assert chosen is not None
        chosen.inflight += 1
        if t > 8.0:
            picks[chosen.id] += 1
        heapq.heappush(done, (t + 0.02, i, chosen))
    assert picks["a"] / picks.total() > 0.25, picks


def test_forget_drops_state() -> None:
    policy, _ = peak()
    (r,) = replicas("a")
    policy.on_end(r, 2.0, True)
    assert policy.estimate(r) == pytest.approx(2.0)
    policy.forget("a")
    assert policy.estimate(r) == pytest.approx(2.0)  # unmeasured: the pool's typical latency
    policy.forget("never-seen")  # harmless


@pytest.mark.parametrize("name", ["least_connections", "peak_ewma"])
def test_equally_loaded_replicas_take_turns(name: str) -> None:
    """Each request done before the next: every replica is idle at each pick, and the
    least recently started one gets it, so every window of 4 picks covers all 4."""
    policy, _ = new(name)
    rs = replicas("a", "b", "c", "d")
    order = []
    for _ in range(12):
        r = policy.pick(rs)
        assert r is not None
        policy.on_start(r)
        order.append(r.id)
        policy.on_end(r, 0.01, True)
    assert all(len(set(order[i : i + 4])) == 4 for i in range(0, 12, 4))
    assert order[4:] == order[:4] * 2  # the same turn order once all were started


def test_replicas_never_started_are_taken_in_random_order() -> None:
    """Several gateways starting at once must not all send their first request to the
    first replica listed."""
    firsts = Counter()
    for seed in range(40):
        policy, _ = new("least_connections", seed=seed)
        first = policy.pick(replicas("a", "b", "c", "d"))
        assert first is not None
        firsts[first.id] += 1
    assert len(firsts) == 4
