"""Priority classes and tenant fairness: a request's class and tenant, the order in which
a saturated pool's queue serves them, and whom a full queue sheds."""

from __future__ import annotations

import asyncio

import pytest

from gateway import config
from gateway.dataplane.headers import split_request
from gateway.dataplane.pool import NoCapacity, Pool
from gateway.dataplane.priority import (
    CRITICAL,
    RANKS,
    SHEDDABLE,
    STANDARD,
    Target,
    rank_of,
    tenant_of,
)
from gateway.dataplane.queue import Ask
from gateway.dataplane.replica import Replica
from tests.fakes import Clock
from tests.unit.test_pool import FirstPolicy


@pytest.mark.parametrize(
    ("route", "may_raise", "header", "expected"),
    [
        (STANDARD, False, None, STANDARD),
        (STANDARD, False, "sheddable", SHEDDABLE),  # lowering oneself is always allowed
        (STANDARD, False, "critical", STANDARD),  # raising only where the route allows it
        (STANDARD, True, " Critical ", CRITICAL),
        (CRITICAL, False, "standard", STANDARD),
        (SHEDDABLE, False, "standard", SHEDDABLE),
        (STANDARD, True, "urgent!!", STANDARD),  # unknown: ignored
    ],
)
def test_a_request_s_class(route: int, may_raise: bool, header: str | None, expected: int) -> None:
    assert rank_of(Target("pool", route, may_raise), header) == expected


def test_a_request_s_tenant() -> None:
    assert tenant_of("acme", "Bearer k1", "10.0.0.1") == "t:acme"
    key = tenant_of(None, "Bearer k1", "10.0.0.1")
    assert key.startswith("k:") and "k1" not in key  # a hash, never the key
    assert key == tenant_of(None, "Bearer k1", "10.9.9.9") != tenant_of(None, "Bearer k2", "")
    assert tenant_of("", None, "10.0.0.1") == "a:10.0.0.1"
    assert len(tenant_of("x" * 10_000, None, "")) == 2 + 128


def test_the_headers_that_decide_are_noted_and_still_forwarded() -> None:
    head = split_request(
        [("Host", "h"), ("X-Priority", "critical"), ("authorization", "Bearer a"),
         ("X-Tenant", "t1"), ("X-Tenant", "t2")]
    )  # fmt: skip
    assert head.noted == {"x-priority": "critical", "authorization": "Bearer a", "x-tenant": "t1"}
    assert ("authorization", "Bearer a") in head.end_to_end and len(head.end_to_end) == 5


def test_the_config_s_classes_are_the_ranks() -> None:
    route = config.Route.model_fields["priority"]
    assert set(route.annotation.__args__) == set(RANKS)  # type: ignore[union-attr]
    with pytest.raises(config.ValidationError, match="priority"):
        config.Route.model_validate({"path": "/", "pool": "p", "priority": "vip"})


# -- the queue -------------------------------------------------------------------------------


def saturated(max_size: int = 100, sheddable_max_waiting: int = 100) -> tuple[Pool, Replica]:
    """A pool of one replica with one slot, taken."""
    queue = {"max_size": max_size, "sheddable_max_waiting": sheddable_max_waiting}
    settings = config.Pool.model_validate({"max_inflight_per_replica": 1, "queue": queue})
    pool = Pool("p", settings, FirstPolicy(), Clock())
    replica = Replica(id="r", url="http://r")
    pool.set_replicas([replica])
    return pool, replica


async def queue_up(pool: Pool, *asks: Ask) -> list[asyncio.Future[Replica]]:
    futures = []
    for ask in asks:
        futures.append(asyncio.ensure_future(pool.acquire(ask=ask)))
        await asyncio.sleep(0)
    return futures


async def serve_all(
    pool: Pool, replica: Replica, waiting: list[asyncio.Future[Replica]]
) -> list[int]:
    """Free the slot once per waiter: the order in which they got it."""
    order = []
    for _ in waiting:
        pool.release(replica, 0.01, 200)
        await asyncio.sleep(0)
        order += [i for i, f in enumerate(waiting) if f.done() and i not in order]
    return order


async def test_classes_go_in_order_and_tenants_in_turn() -> None:
    pool, replica = saturated()
    await pool.acquire()
    asks = [
        Ask(rank=STANDARD, tenant="flood"), Ask(rank=STANDARD, tenant="flood"),
        Ask(rank=STANDARD, tenant="flood"), Ask(rank=SHEDDABLE, tenant="bulk"),
        Ask(rank=STANDARD, tenant="b"), Ask(rank=STANDARD, tenant="c"),
        Ask(rank=CRITICAL, tenant="ops"), Ask(rank=STANDARD, tenant="b"),
    ]  # fmt: skip
    waiting = await queue_up(pool, *asks)
    order = await serve_all(pool, replica, waiting)
    # critical first; then one turn each of flood, b, c; the flood's rest; sheddable last
    assert order == [6, 0, 4, 5, 1, 7, 2, 3]


async def test_a_sheddable_request_is_refused_with_429_when_others_wait() -> None:
    pool, _ = saturated(sheddable_max_waiting=1)
    await pool.acquire()
    (first,) = await queue_up(pool, Ask(rank=SHEDDABLE))  # nobody waited: it may wait
    with pytest.raises(NoCapacity) as refused:
        await pool.acquire(ask=Ask(rank=SHEDDABLE))
    assert (refused.value.status, refused.value.reason) == (429, "shed")
    assert refused.value.retry_after_s >= 1
    (standard,) = await queue_up(pool, Ask(rank=STANDARD))  # others still queue
    assert not standard.done()
    for f in (first, standard):
        f.cancel()


async def test_a_full_queue_sheds_the_lower_class_then_the_flood() -> None:
    pool, replica = saturated(max_size=3)
    await pool.acquire()
    bulk, flood1, flood2 = await queue_up(
        pool, Ask(rank=SHEDDABLE, tenant="bulk"), Ask(tenant="flood"), Ask(tenant="flood")
    )
    (b1,) = await queue_up(pool, Ask(tenant="b"))  # full: the sheddable one makes room
    with pytest.raises(NoCapacity) as shed:
        await bulk
    assert (shed.value.status, shed.value.reason) == (429, "shed")
    (b2,) = await queue_up(pool, Ask(tenant="c"))  # flood has 2, c none: the flood's newest
    with pytest.raises(NoCapacity) as shed:
        await flood2
    assert shed.value.status == 503
    with pytest.raises(NoCapacity) as refused:  # flood 1, b 1, c 1: nobody has 2 more
        await pool.acquire(ask=Ask(tenant="b"))
    assert refused.value.reason == "queue_full"
    with pytest.raises(NoCapacity) as refused:  # a sheddable one never sheds its betters
        await pool.acquire(ask=Ask(rank=SHEDDABLE))
    assert refused.value.status == 429
    assert await serve_all(pool, replica, [flood1, b1, b2]) == [0, 1, 2]


async def test_a_critical_request_may_take_a_full_queue_s_last_standard_place() -> None:
    pool, _ = saturated(max_size=1)
    await pool.acquire()
    (standard,) = await queue_up(pool, Ask(tenant="a"))
    (critical,) = await queue_up(pool, Ask(rank=CRITICAL, tenant="a"))
    with pytest.raises(NoCapacity):
        await standard
    assert not critical.done() and pool.queued == 1
    critical.cancel()
