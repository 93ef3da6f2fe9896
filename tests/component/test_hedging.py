"""Hedged requests over real sockets: a slow attempt gets a backup on another replica."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
from aiohttp import web

from gateway.dataplane.hedging import REFRESH
from tests.component.conftest import ok_handler, pool_config
from tests.conftest import eventually


def counter(gw, name: str) -> float:  # type: ignore[no-untyped-def]
    found = re.search(
        rf'^{name}_total{{pool="default"}} (\S+)$', gw.recorder.exposition().decode(), re.M
    )
    return float(found.group(1)) if found else 0.0


def hangs_when(flag: asyncio.Event, delay_s: float = 30.0):  # type: ignore[no-untyped-def]
    """A replica that answers at once, or, while ``flag`` is set, only after ``delay_s``;
    its /health answers at once either way (the failure health checks do not see)."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        if flag.is_set() and request.path != "/health":
            await asyncio.sleep(delay_s)
        return web.json_response({"ok": True})

    return handler


async def learn_the_tail(client: aiohttp.ClientSession, url: str) -> None:
    for _ in range(REFRESH):
        async with client.post(f"{url}/predict", data=b"{}") as resp:
            assert resp.status == 200


async def settled(pool, replica_ids) -> None:  # type: ignore[no-untyped-def]
    """Wait for cancelled attempts to hand their slots back (a probe keeps its own)."""
    await eventually(
        lambda: all(pool.replicas[r].inflight == pool.replicas[r].probing for r in replica_ids),
        0.5,
        0.01,
        what="slots handed back",
    )


async def test_requests_on_a_hung_replica_are_answered_by_backups(backend, gateway, client) -> None:
    hung = asyncio.Event()
    bad = await backend(hangs_when(hung))
    good = await backend(ok_handler)
    config = pool_config([bad.url, good.url], policy="round_robin", timeouts={"request_s": 20})
    gw = await gateway(config)
    await learn_the_tail(client, gw.url)
    hung.set()
    t0 = time.monotonic()
    for _ in range(10):
        async with client.post(f"{gw.url}/predict", data=b"{}") as resp:
            assert resp.status == 200
    assert time.monotonic() - t0 < 5  # without backups the stuck ones wait out request_s
    assert counter(gw, "gateway_hedges_won") >= 1
    pool = gw.pools["default"]
    stuck = next(r for r in pool.replicas.values() if r.port == bad.port)
    # outrun attempts count as failures: five in a row eject the replica
    assert stuck.health.ejected(pool.clock())
    await settled(pool, pool.replicas)


async def test_without_hedging_a_hung_replica_costs_the_deadline(backend, gateway, client) -> None:
    hung = asyncio.Event()
    bad = await backend(hangs_when(hung))
    config = pool_config([bad.url], hedging={"enabled": False}, timeouts={"request_s": 0.3})
    gw = await gateway(config)
    await learn_the_tail(client, gw.url)
    hung.set()
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.status == 504
    assert counter(gw, "gateway_hedges") == 0


async def test_the_first_attempt_can_still_win(backend, gateway, client) -> None:
    """A backup that loses is cancelled and says nothing against its replica."""
    slow, hung = asyncio.Event(), asyncio.Event()
    first = await backend(hangs_when(slow, delay_s=0.2))
    second = await backend(hangs_when(hung))
    gw = await gateway(pool_config([first.url, second.url], policy="round_robin"))
    await learn_the_tail(client, gw.url)
    slow.set()
    hung.set()
    pool = gw.pools["default"]
    to_first = next(r for r in pool.replicas.values() if r.port == first.port)
    before = second.hits
    for _ in range(4):  # round robin: whichever replica comes first, one goes to `first`
        async with client.post(f"{gw.url}/predict") as resp:
            assert resp.status == 200
        if second.hits > before and to_first.inflight == 0:
            break
    assert counter(gw, "gateway_hedges") >= 1
    assert counter(gw, "gateway_hedges_won") == 0
    to_second = next(r for r in pool.replicas.values() if r.port == second.port)
    assert not to_second.health.ejected(pool.clock())
    await settled(pool, pool.replicas)


async def test_a_backup_waits_for_a_free_slot_and_never_queues(backend, gateway, client) -> None:
    hung, gate = asyncio.Event(), asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        if request.path != "/health":
            await gate.wait()
        return web.json_response({"ok": True})

    bad = await backend(hangs_when(hung))
    busy = await backend(held)
    gw = await gateway(pool_config([bad.url, busy.url], max_inflight_per_replica=1))
    pool = gw.pools["default"]
    to_busy = next(r for r in pool.replicas.values() if r.port == busy.port)
    to_bad = next(r for r in pool.replicas.values() if r.port == bad.port)
    # a request that holds `busy`'s one slot, sent before the tail is known so that it is
    # never hedged itself (those that go to `bad` end at once)
    for _ in range(40):
        blocker = asyncio.create_task(client.post(f"{gw.url}/predict"))
        await asyncio.sleep(0.05)
        if to_busy.inflight:
            break
        (await blocker).release()
    await learn_the_tail(client, gw.url)
    hung.set()
    stuck = asyncio.create_task(client.post(f"{gw.url}/predict"))
    await asyncio.sleep(0.2)  # many hedge delays: no free slot, so no backup
    assert to_bad.inflight == 1 and not stuck.done()
    assert counter(gw, "gateway_hedges") == 0
    gate.set()  # the blocker ends; its slot is free for the backup
    for task in (blocker, stuck):
        resp = await asyncio.wait_for(task, 5)
        assert resp.status == 200
        resp.release()
    assert counter(gw, "gateway_hedges_won") == 1
    await settled(pool, pool.replicas)


async def test_a_client_that_leaves_mid_race_frees_both_slots(backend, gateway, client) -> None:
    hung = asyncio.Event()
    bad = await backend(hangs_when(hung))
    worse = await backend(hangs_when(hung))
    gw = await gateway(pool_config([bad.url, worse.url]))
    await learn_the_tail(client, gw.url)
    hung.set()
    pool = gw.pools["default"]
    with pytest.raises(TimeoutError):
        async with client.post(f"{gw.url}/predict", timeout=aiohttp.ClientTimeout(total=0.3)):
            pass
    assert counter(gw, "gateway_hedges") == 1
    await settled(pool, pool.replicas)
    assert not any(r.health.ejected(pool.clock()) for r in pool.replicas.values())


async def test_one_outrun_attempt_per_replica_runs_on_as_its_probe(
    backend, gateway, client
) -> None:
    """A replica that slowed down answers the attempt a backup outran: the gateway waits
    for that answer in the background (its slot held), learns from it, and drops it;
    the replica has answered someone, so it is not taken for hung. A second outrun
    attempt while the probe runs is cut."""
    slow = asyncio.Event()
    lagging = await backend(hangs_when(slow, delay_s=0.6))
    good = await backend(ok_handler)
    gw = await gateway(pool_config([lagging.url, good.url], policy="round_robin"))
    await learn_the_tail(client, gw.url)
    pool = gw.pools["default"]
    replica = next(r for r in pool.replicas.values() if r.port == lagging.port)
    answered_before = replica.health.last_head_at
    slow.set()
    for _ in range(4):  # round robin: two of them go to the lagging replica first
        async with client.post(f"{gw.url}/predict") as resp:
            assert resp.status == 200
    assert counter(gw, "gateway_hedges_won") >= 2
    assert replica.probing and replica.inflight == 1  # the probe; the other one was cut
    await eventually(lambda: not replica.probing, 2, what="the probe's answer")
    assert replica.inflight == 0
    assert replica.health.last_head_at > answered_before  # its answer came, and counted
    assert not replica.health.ejected(pool.clock())
