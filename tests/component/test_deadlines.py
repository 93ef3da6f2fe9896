"""Deadline-aware admission over real sockets: a request that cannot be answered within
its deadline is refused at once, with Retry-After, on a busy pool and on a cold one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from aiohttp import web

from tests.component.conftest import pool_config
from tests.component.test_autoscale_process import records, sim_pool
from tests.conftest import eventually

SERVICE_S = 0.4


def slow_handler(delay_s: float):
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay_s)
        return web.json_response({"ok": True})

    return handler


async def post(client, url: str, **headers: str) -> tuple[int, str | None, float]:
    t0 = time.monotonic()
    async with client.post(f"{url}/predict", data=b"{}", headers=headers) as resp:
        await resp.read()
        return resp.status, resp.headers.get("Retry-After"), time.monotonic() - t0


async def one_slot_pool(backend, **overrides):
    b = await backend(slow_handler(SERVICE_S))
    config = pool_config(
        [b.url], max_inflight_per_replica=1, concurrency_limit="fixed",
        hedging={"enabled": False}, **overrides,
    )  # fmt: skip
    return b, config


async def test_a_request_that_would_wait_past_its_deadline_is_refused_at_once(
    backend, gateway, client
) -> None:
    """One slot, answers of 0.4 s, three waiting: a newcomer expects 4 x 0.4 = 1.6 s."""
    b, config = await one_slot_pool(backend)
    gw = await gateway(config)
    assert (await post(client, gw.url))[0] == 200  # the service time is measured
    busy = [asyncio.create_task(post(client, gw.url)) for _ in range(4)]
    await eventually(lambda: gw.pools["default"].queued == 3)
    status, retry_after, took = await post(client, gw.url, **{"X-Deadline-Ms": "300"})
    assert status == 503 and took < 0.2  # not after waiting 300 ms for nothing
    assert retry_after == "2"  # ceil(1.6 - 0.3)
    status, _, _ = await post(client, gw.url, **{"X-Deadline-Ms": "300", "X-Priority": "sheddable"})
    assert status == 429
    patient = asyncio.create_task(post(client, gw.url, **{"X-Deadline-Ms": "10000"}))
    assert all(s == 200 for s, _, _ in await asyncio.gather(*busy, patient))
    assert b.hits == 6  # the refused ones never reached the replica
    async with client.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp:
        text = await resp.text()
    assert 'gateway_rejected_total{pool="default",reason="deadline"} 2.0' in text


async def test_the_route_s_deadline_and_a_bad_header(backend, gateway, client) -> None:
    b, config = await one_slot_pool(backend)
    config["routes"][0]["deadline_s"] = 0.6
    gw = await gateway(config)
    assert (await post(client, gw.url))[0] == 200
    busy = [asyncio.create_task(post(client, gw.url, **{"X-Deadline-Ms": "9000"}))
            for _ in range(3)]  # fmt: skip
    await eventually(lambda: gw.pools["default"].queued == 2)
    status, _, took = await post(client, gw.url)  # the route's 0.6 s against 3 x 0.4 s
    assert status == 503 and took < 0.2
    assert all(s == 200 for s, _, _ in await asyncio.gather(*busy))
    hits = b.hits
    for bad in ("soon", "0", "-1"):
        async with client.post(f"{gw.url}/predict", headers={"X-Deadline-Ms": bad}) as resp:
            assert resp.status == 400 and "X-Deadline-Ms" in await resp.text()
    assert b.hits == hits


async def test_a_request_let_in_waits_no_longer_than_its_deadline(backend, gateway, client) -> None:
    """Nothing answered yet, so nothing says the wait is long: let in, and bounded."""
    _, config = await one_slot_pool(backend)
    gw = await gateway(config)
    busy = asyncio.create_task(post(client, gw.url))
    await eventually(lambda: gw.pools["default"].inflight == 1)
    status, _, took = await post(client, gw.url, **{"X-Deadline-Ms": "200"})  # queued
    assert status == 503 and 0.15 < took < 0.35
    assert (await busy)[0] == 200
    status, _, took = await post(client, gw.url, **{"X-Deadline-Ms": "200"})  # on the replica
    assert status == 504 and 0.15 < took < 0.35


async def test_a_cold_pool_refuses_what_cannot_wait_for_a_start_and_starts_anyway(
    gateway, client, tmp_path: Path
) -> None:
    config = sim_pool(
        tmp_path, "--startup-delay-s", "1", min_replicas=0, expected_startup_s=5
    )  # fmt: skip
    gw = await gateway(config)
    status, retry_after, took = await post(client, gw.url, **{"X-Deadline-Ms": "1000"})
    assert status == 503 and took < 0.5
    assert retry_after == "4"  # the seed's 5 s, less the deadline
    await eventually(lambda: len(records(tmp_path)) == 1, within=5)  # it was demand
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] == 1, within=15)
    state = tmp_path / "startup" / "default.json"
    await eventually(state.exists, what="the start-up time written, after the readiness")
    kept = orjson.loads(state.read_bytes())["startup_s"]
    assert len(kept) == 1 and 1.0 <= kept[0] < 10  # measured, and kept for the next run
    assert scaler.startup.expected_s == kept[0]
    assert (await post(client, gw.url, **{"X-Deadline-Ms": "1000"}))[0] == 200
