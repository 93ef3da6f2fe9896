"""The reserve for critical requests and an engine's learnt batch size: tables, a fake
clock, and the pool that applies both."""

from __future__ import annotations

import asyncio

import pytest

from gateway import config
from gateway.dataplane.pool import Pool
from gateway.dataplane.priority import CRITICAL, SHEDDABLE, STANDARD
from gateway.dataplane.queue import Ask
from gateway.dataplane.replica import EngineBatch, EngineLoad, Replica, learn_batch
from gateway.dataplane.reserve import MISS, QUIET_S, Reserve, empty_chance
from tests.fakes import Clock
from tests.unit.test_pool import FirstPolicy


@pytest.mark.parametrize(
    ("rho", "h", "expected"),
    [(0.0, 1, 0.0), (1.0, 1, 0.5), (1.0, 3, 0.25), (0.5, 1, 1 / 3), (0.5, 2, 0.25 / 1.75)],
)
def test_the_chance_a_reserve_is_all_taken(rho: float, h: int, expected: float) -> None:
    assert empty_chance(rho, h) == pytest.approx(expected)


def steady(critical_per_s: float, freed_per_s: float, seconds: float = 60.0) -> Reserve:
    """A reserve that has seen these rates for ``seconds`` (events evenly spaced)."""
    reserve = Reserve()
    for rate, events in ((critical_per_s, reserve.critical), (freed_per_s, reserve.freed)):
        for i in range(int(rate * seconds)):
            events.add(i / rate)
    return reserve


@pytest.mark.parametrize(
    ("critical", "freed", "pool_slots", "expected"),
    [
        (2.4, 20.0, 8, 2),  # llm-overload: rho 0.12, h 2 misses 1.3 % (h 1: 11 %)
        (0.2, 20.0, 8, 1),  # rare critical requests: one slot is enough
        (2.4, 20.0, 4, 1),  # a quarter of the pool's slots at most
        (2.4, 20.0, 3, 0),  # a pool too small to keep any free
        (10.0, 10.0, 64, 16),  # critical demand as large as the pool's turnover: the cap
    ],
)
def test_the_reserve_grows_with_critical_demand_under_its_cap(
    critical: float, freed: float, pool_slots: int, expected: int
) -> None:
    reserve = steady(critical, freed)
    h = reserve.slots(60.0, pool_slots)
    assert h == expected
    rho = reserve.critical.per_s(60.0) / reserve.freed.per_s(60.0)
    assert h == 0 or empty_chance(rho, h) <= MISS or h == pool_slots // 4


def test_no_reserve_without_critical_requests_or_after_they_stop() -> None:
    reserve = steady(0.0, 20.0)
    assert reserve.slots(60.0, 64) == 0
    reserve.critical.add(60.0)
    assert reserve.slots(60.0, 64) == 1
    assert reserve.slots(60.0 + QUIET_S + 1, 64) == 0


def test_a_first_critical_request_before_any_slot_freed_reserves_one() -> None:
    reserve = Reserve()
    reserve.critical.add(0.0)
    assert reserve.slots(0.0, 8) == 1


QUEUED = EngineLoad(2, 1, None, 0.75)  # the read before: the engine queued then too


@pytest.mark.parametrize(
    ("known", "before", "load", "expected"),
    [
        (None, QUEUED, EngineLoad(2, 0, None, 1.0), None),  # not queueing: says nothing
        (None, QUEUED, EngineLoad(2, 3, None, 1.0), EngineBatch(2, 1.0)),  # queueing at 2
        (None, None, EngineLoad(2, 3, None, 1.0), None),  # a first read: maybe mid-step
        (None, EngineLoad(2, 0, None, 0.75), EngineLoad(2, 3, None, 1.0), None),  # mid-step
        (EngineBatch(8, 0.0), QUEUED, EngineLoad(5, 1, None, 1.0), EngineBatch(8, 0.0)),  # dip
        (EngineBatch(8, 0.0), QUEUED, EngineLoad(8, 1, None, 1.0), EngineBatch(8, 1.0)),
        (EngineBatch(8, 0.0), None, EngineLoad(9, 0, None, 1.0), EngineBatch(9, 1.0)),  # more
        (EngineBatch(8, 0.0), QUEUED, EngineLoad(5, 1, None, 31.0), EngineBatch(5, 31.0)),
        (EngineBatch(8, 0.0), QUEUED, EngineLoad(0, 0, None, 31.0), None),  # aged out, idle
        (None, QUEUED, EngineLoad(0, 4, None, 1.0), None),  # nothing running: no batch
        (None, QUEUED, EngineLoad(9, 4, 0.6, 1.0), None),  # queueing for memory, maybe
        (None, QUEUED, EngineLoad(2, 4, 0.3, 1.0), EngineBatch(2, 1.0)),
    ],
)
def test_an_engine_s_batch_is_learnt_from_reads_that_queue(
    known: EngineBatch | None, before: EngineLoad | None, load: EngineLoad,
    expected: EngineBatch | None,
) -> None:  # fmt: skip
    assert learn_batch(known, before, load) == expected


def pool_of(n: int, cap: int) -> tuple[Pool, list[Replica], Clock]:
    clock = Clock()
    settings = {"max_inflight_per_replica": cap, "concurrency_limit": "fixed"}
    pool = Pool("p", config.Pool.model_validate(settings), FirstPolicy(), clock)
    replicas = [Replica(id=f"r{i}", url=f"http://r{i}") for i in range(n)]
    pool.set_replicas(replicas)
    return pool, replicas, clock


async def test_lower_classes_leave_the_reserve_to_critical_requests() -> None:
    pool, _, clock = pool_of(4, 2)  # 8 slots: a reserve of 2 at most
    for _ in range(200):  # 5 s of turnover at 40 requests/s
        clock.now += 0.025
        pool.release(await pool.acquire(), 0.01, 200)
    first = await pool.acquire(ask=Ask(rank=CRITICAL))
    pool.release(first, 0.01, 200)  # one critical request among them: a reserve of 1
    taken = [await pool.acquire(ask=Ask(rank=STANDARD)) for _ in range(7)]
    waiting = asyncio.ensure_future(pool.acquire(ask=Ask(rank=SHEDDABLE)))
    await asyncio.sleep(0)
    assert not waiting.done() and pool.inflight == 7  # the 8th slot is the reserve
    critical = await pool.acquire(ask=Ask(rank=CRITICAL))  # at once, no wait
    assert pool.inflight == 8
    pool.release(critical, 0.01, 200)  # freed: the reserve again, not the waiter's
    await asyncio.sleep(0)
    assert not waiting.done()
    pool.release(taken[0], 0.01, 200)  # two free: one for the waiter, one kept
    await asyncio.sleep(0)
    assert waiting.done() and pool.inflight == 7
    clock.now += QUIET_S + 1  # critical requests stopped: every slot for anyone
    assert await pool.acquire(ask=Ask(rank=STANDARD)) is not None and pool.inflight == 8


async def test_a_replica_takes_no_more_than_its_engine_s_batch() -> None:
    pool, (r0, r1), clock = pool_of(2, 8)
    for _ in range(2):  # it queued at 2, two reads in a row: its batch is 2
        before, r0.engine = r0.engine, EngineLoad(running=2, waiting=1, kv_usage=None, at=clock())
        pool.engine_read(r0, before)
    before, r0.engine = r0.engine, EngineLoad(running=2, waiting=0, kv_usage=None, at=clock())
    pool.engine_read(r0, before)  # no longer queueing, but its batch is still 2
    got = [await pool.acquire() for _ in range(4)]
    assert got.count(r0) == 2 and got.count(r1) == 2  # FirstPolicy: r0 until it is full
    r0.engine = None  # engine signals gone stale: the cap alone again
    assert await pool.acquire() is r0
