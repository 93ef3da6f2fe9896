"""Where traffic goes, over real sockets: slow replicas, failing ones, dead ones."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.component.conftest import Backend, crash, pool_config
from tests.conftest import eventually


def sleeper(delay_s: float, status: int = 200):
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/health":
            return web.json_response({"ok": True})
        await asyncio.sleep(delay_s)
        return web.json_response({"ok": True}, status=status)

    return handler


async def closed_loop(
    client: aiohttp.ClientSession, url: str, workers: int, total: int
) -> list[int]:
    """``workers`` clients each sending one request after another, ``total`` in all."""
    statuses: list[int] = []

    async def worker() -> None:
        while len(statuses) < total:
            async with client.post(url, data=b"{}") as resp:
                await resp.read()
                statuses.append(resp.status)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return statuses


@pytest.mark.parametrize(("policy", "most"), [("peak_ewma", 0.10), ("least_connections", 0.25)])
async def test_a_5x_slower_replica_gets_little_traffic(
    backend, gateway, client, policy: str, most: float
) -> None:
    fast = [await backend(sleeper(0.01)) for _ in range(2)]
    slow = await backend(sleeper(0.05))
    gw = await gateway(pool_config([fast[0].url, slow.url, fast[1].url], policy=policy))
    statuses = await closed_loop(client, f"{gw.url}/predict", workers=4, total=300)
    assert statuses.count(200) == len(statuses)
    share = slow.hits / sum(b.hits for b in [*fast, slow])
    assert share < most, share
    if policy == "peak_ewma":  # operators can see why: the estimates are exported
        text = gw.recorder.exposition().decode()
        estimates = {
            s.labels["replica"]: s.value
            for f in text_string_to_metric_families(text)
            if f.name == "gateway_replica_latency_estimate_seconds"
            for s in f.samples
        }
        assert max(estimates, key=estimates.__getitem__) == slow.url.removeprefix("http://")


@pytest.mark.parametrize("policy", ["peak_ewma", "least_connections"])
async def test_a_replica_failing_fast_gets_under_5_percent_once_detected(
    backend, gateway, client, policy: str
) -> None:
    good = [await backend(sleeper(0.01)) for _ in range(2)]
    bad = await backend(sleeper(0, status=500))
    gw = await gateway(pool_config([bad.url, *(b.url for b in good)], policy=policy))
    await closed_loop(client, f"{gw.url}/predict", workers=4, total=50)  # detection
    before = bad.hits
    statuses = await closed_loop(client, f"{gw.url}/predict", workers=4, total=200)
    share = (bad.hits - before) / len(statuses)
    assert share < 0.05, share
    assert statuses.count(500) == bad.hits - before  # a 500 is an answer, not retried


async def test_a_replica_killed_under_load_costs_the_client_nothing(
    backend, gateway, client
) -> None:
    replicas: list[Backend] = [await backend(sleeper(0.02)) for _ in range(3)]
    gw = await gateway(pool_config([b.url for b in replicas]))
    statuses: list[int] = []
    stop_at = time.monotonic() + 1.5

    async def worker() -> None:
        while time.monotonic() < stop_at:
            async with client.post(f"{gw.url}/predict", data=b"{}") as resp:
                await resp.read()
                statuses.append(resp.status)

    load = asyncio.gather(*(worker() for _ in range(6)))
    await eventually(lambda: replicas[0].hits > 5)
    await crash(replicas[0])  # in-flight requests on it are reset mid-way
    await load
    assert len(statuses) > 50
    assert set(statuses) == {200}


async def test_active_health_takes_a_replica_out_and_back(backend, gateway, client) -> None:
    healthy = True

    async def toggled(request: web.Request) -> web.Response:
        if request.path == "/health":
            return web.json_response({}, status=200 if healthy else 503)
        return web.json_response({"ok": True})

    flaky = await backend(toggled)
    steady = await backend(sleeper(0))
    config = pool_config(
        [flaky.url, steady.url],
        policy="round_robin",
        health={"unhealthy_threshold": 2, "healthy_threshold": 2},
    )
    gw = await gateway(config)
    pool = gw.pools["default"]
    replica = pool.replicas[flaky.url[7:]]
    healthy = False
    await eventually(lambda: not replica.health.up)
    before = flaky.hits
    for _ in range(10):
        async with client.post(f"{gw.url}/predict") as resp:
            assert resp.status == 200
    assert flaky.hits == before  # out of rotation
    healthy = True
    await eventually(lambda: replica.health.up)
    for _ in range(10):
        async with client.post(f"{gw.url}/predict") as resp:
            assert resp.status == 200
    assert flaky.hits > before


async def test_fail_open_when_every_replica_fails_its_health_check(
    backend, gateway, client
) -> None:
    async def sick_but_serving(request: web.Request) -> web.Response:
        status = 503 if request.path == "/health" else 200
        return web.json_response({}, status=status)

    replicas = [await backend(sick_but_serving) for _ in range(2)]
    gw = await gateway(pool_config([b.url for b in replicas]))
    pool = gw.pools["default"]
    await eventually(lambda: not any(r.health.up for r in pool.replicas.values()))
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.status == 200
