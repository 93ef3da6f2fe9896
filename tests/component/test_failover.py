"""Failures over real sockets: retries, the budget, timeouts, the queue, ejection."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.component.conftest import ok_handler, pool_config


def status_handler(status: int, delay_s: float = 0.0):
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.json_response({"status": status}, status=status)

    return handler


async def test_503_from_one_replica_is_retried_on_another(backend, gateway, client) -> None:
    bad = await backend(status_handler(503))
    good = await backend(ok_handler)
    gw = await gateway(pool_config([bad.url, good.url], policy="round_robin"))
    for _ in range(10):
        async with client.post(f"{gw.url}/predict", data=b"{}") as resp:
            assert resp.status == 200
    assert bad.hits >= 1 and good.hits == 10


async def retries(client, gw, reason: str) -> float:
    """The gateway's count of retries after ``reason``, from its /metrics."""
    async with client.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "gateway_retries"
        for sample in family.samples
        if sample.name == "gateway_retries_total" and sample.labels.get("reason") == reason
    )


async def test_connection_refused_is_retried(backend, gateway, client) -> None:
    good = await backend(ok_handler)
    dead = "http://127.0.0.1:1"
    gw = await gateway(pool_config([dead, good.url], policy="round_robin"))
    for _ in range(10):
        async with client.post(f"{gw.url}/predict") as resp:
            assert resp.status == 200
    assert good.hits == 10
    assert await retries(client, gw, "connect") >= 1  # the dead one was tried, and left


async def test_no_retry_after_the_first_byte(backend, gateway, client) -> None:
    async def breaks_midway(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"partial")
        await asyncio.sleep(0.05)  # let the head and the first bytes reach the gateway
        assert request.transport is not None
        request.transport.abort()  # the replica dies mid-response
        return resp

    first = await backend(breaks_midway)
    second = await backend(breaks_midway)
    gw = await gateway(pool_config([first.url, second.url]))
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.status == 200  # the head had already gone out
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # a cut-off body must not look complete
    assert first.hits + second.hits == 1


async def test_retries_stay_within_the_budget(backend, gateway, client) -> None:
    replicas = [await backend(status_handler(503)) for _ in range(3)]
    config = pool_config(
        [b.url for b in replicas],
        retries={"attempts": 3, "budget_percent": 20, "min_retries_per_s": 0.5},
        outlier={"consecutive_failures": 1000},
    )
    gw = await gateway(config)
    n = 200
    for _ in range(n // 20):
        responses = await asyncio.gather(*(client.post(f"{gw.url}/predict") for _ in range(20)))
        for resp in responses:
            assert resp.status == 503  # the last answer is passed through when retries stop
            resp.release()
    retries = sum(b.hits for b in replicas) - n
    assert retries <= 0.2 * n + 0.5 * 10, retries  # without a budget: 2 x 200
    assert retries >= 0.2 * n - 1


async def test_hung_replica_gives_504(backend, gateway, client) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    b = await backend(hang)
    gw = await gateway(pool_config([b.url], timeouts={"request_s": 0.3}))
    t0 = time.monotonic()
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.status == 504
    assert time.monotonic() - t0 < 2


async def test_hung_replica_is_abandoned_for_another_within_the_deadline(
    backend, gateway, client
) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    hung = await backend(hang)
    good = await backend(ok_handler)
    config = pool_config(
        [hung.url, good.url], policy="round_robin", timeouts={"request_s": 2, "per_try_s": 0.2}
    )
    gw = await gateway(config)
    for _ in range(4):
        t0 = time.monotonic()
        async with client.post(f"{gw.url}/predict") as resp:
            assert resp.status == 200
        assert time.monotonic() - t0 < 2  # within request_s: the hung try was left early
    assert hung.hits >= 1 and good.hits == 4  # by a per-try timeout or a hedge


async def test_full_queue_gets_503_with_retry_after(backend, gateway, client) -> None:
    gate = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        await gate.wait()
        return web.json_response({"ok": True})

    b = await backend(held)
    config = pool_config([b.url], max_inflight_per_replica=1, queue={"max_size": 1})
    gw = await gateway(config)
    served = asyncio.create_task(client.post(f"{gw.url}/predict"))
    queued = asyncio.create_task(client.post(f"{gw.url}/predict"))
    await asyncio.sleep(0.1)
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) >= 1
    gate.set()
    for task in (served, queued):
        resp = await task
        assert resp.status == 200
        resp.release()


async def test_queue_timeout_gets_503_with_retry_after(backend, gateway, client) -> None:
    gate = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        await gate.wait()
        return web.json_response({"ok": True})

    b = await backend(held)
    config = pool_config([b.url], max_inflight_per_replica=1, queue={"timeout_s": 0.2})
    gw = await gateway(config)
    served = asyncio.create_task(client.post(f"{gw.url}/predict"))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.status == 503
        assert "Retry-After" in resp.headers
    assert 0.15 < time.monotonic() - t0 < 2
    gate.set()
    (await served).release()


async def test_slot_cap_holds_requests_in_the_gateway(backend, gateway, client) -> None:
    running = 0
    peak = 0

    async def counted(request: web.Request) -> web.Response:
        nonlocal running, peak
        if request.path == "/health":
            return web.json_response({"ok": True})
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return web.json_response({"ok": True})

    b = await backend(counted)
    gw = await gateway(pool_config([b.url], max_inflight_per_replica=3))
    responses = await asyncio.gather(*(client.post(f"{gw.url}/predict") for _ in range(30)))
    assert all(r.status == 200 for r in responses)
    for r in responses:
        r.release()
    assert peak == 3
