"""The pool's slots, queue, eligibility and ejection cap, with a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway import config
from gateway.dataplane.hedging import REFRESH
from gateway.dataplane.pool import NoCapacity, Pool
from gateway.dataplane.replica import Replica
from tests.fakes import Clock


class FirstPolicy:
    """Picks the first candidate: makes the pool's own choices visible."""

    reads_prompt = False

    def pick(
        self,
        candidates: Sequence[Replica],
        full: Sequence[Replica] = (),
        ahead: int = 0,
        prompt: Sequence[int] = (),
    ) -> Replica | None:
        return candidates[0] if candidates else None

    def on_start(self, replica: Replica) -> None:
        pass

    def on_end(self, replica: Replica, latency_s: float, ok: bool) -> None:
        pass

    def forget(self, replica_id: str) -> None:
        self.forgotten.append(replica_id)

    def __init__(self) -> None:
        self.forgotten: list[str] = []


def make_pool(n: int, **settings: object) -> tuple[Pool, list[Replica], Clock]:
    clock = Clock()
    pool = Pool("p", config.Pool.model_validate(settings), FirstPolicy(), clock)
    replicas = [Replica(id=f"r{i}", url=f"http://r{i}") for i in range(n)]
    pool.set_replicas(replicas)
    return pool, replicas, clock


async def test_slots_are_capped_and_freed_slots_go_to_the_oldest_waiter() -> None:
    pool, (r0,), _ = make_pool(1, max_inflight_per_replica=2)
    assert await pool.acquire() is r0 and await pool.acquire() is r0
    assert r0.inflight == 2
    first = asyncio.ensure_future(pool.acquire())
    second = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    assert pool.queued == 2 and not first.done()
    pool.release(r0, 0.01, 200)
    await asyncio.sleep(0)
    assert first.done() and not second.done()
    assert r0.inflight == 2  # the slot moved straight to the waiter
    pool.release(r0, 0.01, 200)
    assert await second is r0


async def test_a_full_queue_refuses() -> None:
    pool, _, _ = make_pool(1, max_inflight_per_replica=1, queue={"max_size": 1})
    await pool.acquire()
    waiting = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    with pytest.raises(NoCapacity) as refused:
        await pool.acquire()
    assert refused.value.reason == "queue_full" and refused.value.retry_after_s >= 1
    waiting.cancel()


async def test_queue_timeout() -> None:
    pool, _, _ = make_pool(1, max_inflight_per_replica=1, queue={"timeout_s": 0.05})
    await pool.acquire()
    with pytest.raises(NoCapacity) as refused:
        await pool.acquire()
    assert refused.value.reason == "queue_timeout"
    assert pool.queued == 0


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    pool, (r0,), _ = make_pool(1, max_inflight_per_replica=1)
    await pool.acquire()
    waiting = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.sleep(0)
    assert pool.queued == 0
    pool.release(r0, 0.01, 200)
    assert r0.inflight == 0


async def test_a_retry_waiting_for_another_replica_does_not_block_the_queue() -> None:
    pool, (r0, r1), _ = make_pool(2, max_inflight_per_replica=1)
    assert await pool.acquire() is r0
    assert await pool.acquire() is r1
    retry = asyncio.ensure_future(pool.acquire(frozenset({"r0"})))
    fresh = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    pool.release(r0, 0.01, 503)  # r0 is free, but the retry must not go back to it
    await asyncio.sleep(0)
    assert fresh.done() and fresh.result() is r0 and not retry.done()
    pool.release(r1, 0.01, 200)
    assert await retry is r1


async def test_retry_with_no_other_replica_fails_fast() -> None:
    pool, _, _ = make_pool(1)
    with pytest.raises(NoCapacity) as refused:
        await pool.acquire(frozenset({"r0"}))
    assert refused.value.reason == "no_replica"


async def test_unhealthy_and_draining_replicas_are_not_picked() -> None:
    pool, (r0, r1, r2), _ = make_pool(3, health={"unhealthy_threshold": 1})
    pool.record_probe(r0, False)
    r1.draining = True
    assert await pool.acquire() is r2


async def test_a_replica_back_from_down_is_forgotten_by_the_policy() -> None:
    pool, (r0, _), _ = make_pool(2, health={"unhealthy_threshold": 1, "healthy_threshold": 1})
    assert isinstance(pool.policy, FirstPolicy)
    pool.record_probe(r0, True)  # up already: nothing to forget
    pool.record_probe(r0, False)
    assert pool.policy.forgotten == []  # what it learnt while failing stays while it is down
    pool.record_probe(r0, True)
    assert pool.policy.forgotten == ["r0"]


async def test_fail_open_when_nothing_is_healthy() -> None:
    pool, replicas, _ = make_pool(2, health={"unhealthy_threshold": 1})
    for r in replicas:
        pool.record_probe(r, False)
    assert await pool.acquire() in replicas


@pytest.mark.parametrize(
    ("n", "percent", "most"), [(4, 50, 2), (3, 50, 1), (2, 100, 2), (1, 50, 0)]
)
async def test_ejection_never_exceeds_the_cap(n: int, percent: int, most: int) -> None:
    outlier = {"consecutive_failures": 1, "max_ejected_percent": percent}
    pool, replicas, clock = make_pool(n, outlier=outlier)
    for r in replicas:
        r.inflight += 1
        pool.release(r, 0.01, 500)
    assert sum(r.health.ejected(clock.now) for r in replicas) == most


async def test_an_ejected_replica_returns_after_its_ejection() -> None:
    outlier = {"consecutive_failures": 2, "base_ejection_s": 10}
    pool, (r0, r1), clock = make_pool(2, outlier=outlier)
    for _ in range(2):
        r0.inflight += 1
        pool.release(r0, 0.01, None)
    assert await pool.acquire() is r1
    clock.now = 10.0
    assert await pool.acquire() is r0


async def test_snapshots_keep_known_replicas_and_drain_removed_ones() -> None:
    pool, (r0, r1), _ = make_pool(2)
    await pool.acquire()  # r0 busy
    pool.set_replicas([Replica(id="r1", url="http://new"), Replica(id="r2", url="http://r2")])
    assert pool.replicas["r1"] is r1  # state kept, not replaced
    assert r0.draining and "r0" not in pool.replicas
    pool.release(r0, 0.01, 200)  # its in-flight request still finishes
    assert r0.inflight == 0


def learn_heads(pool: Pool, replica: Replica, latency_s: float) -> None:
    for _ in range(REFRESH):
        pool._start(replica)
        pool.release(replica, latency_s, 200)


def test_hedging_waits_for_the_tail_and_can_be_off() -> None:
    pool, (r0, _), _ = make_pool(2)
    assert pool.hedge_after() is None
    learn_heads(pool, r0, 0.02)
    assert pool.hedge_after() == 0.04  # twice the median: a tight distribution
    failing, (f0, _), _ = make_pool(2)
    for _ in range(REFRESH):  # failed attempts say nothing about how long heads take
        failing._start(f0)
        failing.release(f0, 0.02, 503)
    assert failing.hedge_after() is None
    off, (o0, _), _ = make_pool(2, hedging={"enabled": False})
    learn_heads(off, o0, 0.02)
    assert off.hedge_after() is None


def test_a_hedge_takes_only_a_free_slot_outside_the_tried() -> None:
    pool, (_, r1), _ = make_pool(2, max_inflight_per_replica=1)
    assert pool.try_hedge(frozenset({"r0"})) is r1 and r1.inflight == 1
    assert pool.try_hedge(frozenset({"r0"})) is None  # r1 is full: no queueing for hedges
    assert pool.queued == 0


def test_a_hedge_takes_only_an_idle_slot_not_the_headroom_over_the_knee() -> None:
    """A backup queued inside a busy replica waits behind the work it was meant to beat:
    it adds load and cannot win, so it takes a slot under the learnt knee or none."""
    pool, (_, r1), _ = make_pool(2)
    r1.cap, r1.slots, r1.sure_slots = 2, 1.0, 1.0  # learnt: one slot at a time, one may wait
    pool._start(r1)
    assert pool.try_hedge(frozenset({"r0"})) is None  # busy: only the headroom is free
    pool._free(r1)
    assert pool.try_hedge(frozenset({"r0"})) is r1


@pytest.mark.parametrize("limit", [{}, {"concurrency_limit": "fixed"}])
def test_a_hedge_goes_only_to_an_idle_replica_while_its_slots_are_unknown(limit) -> None:
    """Neither a limit not yet learnt (8 at first) nor an operator's cap is a slot count:
    a backup sent under one lands behind the work on a busy replica, in the very burst
    that made requests late (the matrix's exp-s1-l90: p50 over 200 ms in its first
    seconds, against the peers' 150, until backups went to idle replicas only)."""
    pool, (_, r1), _ = make_pool(2, max_inflight_per_replica=8, **limit)
    assert r1.cap == 8 and r1.slots == 8.0
    pool._start(r1)
    assert pool.try_hedge(frozenset({"r0"})) is None
    pool._free(r1)
    assert pool.try_hedge(frozenset({"r0"})) is r1


def test_hedges_stay_within_their_budget() -> None:
    pool, _, _ = make_pool(2, max_inflight_per_replica=1000, concurrency_limit="fixed")
    pool.hedge_budget.min_per_s = 0.0
    for _ in range(1000):
        pool.record_request()
    hedges = 0
    while (replica := pool.try_hedge(frozenset())) is not None:
        hedges += 1
        pool._free(replica)  # idle again: only the budget stops hedges here
    assert hedges == 20  # the default max_extra_percent: 2 % of the requests


def test_an_outrun_replica_is_ejected_only_if_it_hung() -> None:
    """A replica that keeps answering loses hedge races without having failed; one that
    answers nobody while several requests wait on it has hung."""
    pool, (r0, _), clock = make_pool(2, outlier={"consecutive_failures": 3})
    for _ in range(32):
        pool._start(r0)
        clock.now += 0.01
        pool.release(r0, 0.01, 200)
    for _ in range(10):  # each outrun after its own tail, but r0 answered just before
        pool._start(r0)
        pool._start(r0)
        pool.release(r0, 0.01, 200)
        pool.outrun(r0, 0.05)
    assert r0.inflight == 0 and r0.health.routable(clock())
    for _ in range(3):  # silent for 0.3 s with another request on it: hung
        pool._start(r0)
        pool._start(r0)
        clock.now += 0.31
        pool.outrun(r0, 0.3)
        pool.abandon(r0)
    assert r0.inflight == 0 and not r0.health.routable(clock())
    assert r0.health.ejected_by_hedging


@pytest.mark.parametrize(("n", "most"), [(2, 1), (4, 1), (8, 2), (1, 0)])
def test_hedging_ejects_at_most_a_quarter_of_the_replicas(n: int, most: int) -> None:
    pool, replicas, clock = make_pool(n, outlier={"consecutive_failures": 1})
    for r in replicas:
        pool._start(r)
        pool._start(r)
        pool.outrun(r, 1.0)
        pool.abandon(r)
    assert sum(not r.health.routable(clock()) for r in replicas) == most
