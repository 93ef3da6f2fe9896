"""Priorities through the gateway, on a replica with one slot held open: a sheddable
request is refused with 429 and Retry-After while others wait, a critical one (allowed
by its route to say so) is served before the standard ones queued ahead of it, and a
client on a route that does not allow it cannot raise itself."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.component.conftest import pool_config
from tests.conftest import eventually


async def test_classes_through_the_gateway(backend, gateway, client) -> None:  # type: ignore[no-untyped-def]
    release = asyncio.Event()
    served: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/health":
            return web.json_response({"ok": True})
        await release.wait()
        served.append(request.headers.get("X-Tag", ""))
        return web.json_response({"ok": True})

    replica = await backend(handler)
    config = pool_config(
        [replica.url], max_inflight_per_replica=1, concurrency_limit="fixed",
        queue={"sheddable_max_waiting": 1}, hedging={"enabled": False},
    )  # fmt: skip
    config["routes"] = [
        {"path": "/ops", "pool": "default", "priority_header": True},
        {"path": "/", "pool": "default"},
    ]
    gw = await gateway(config)

    async def send(path: str, tag: str, priority: str | None = None) -> tuple[int, str | None]:
        headers = {"X-Tag": tag, **({"X-Priority": priority} if priority else {})}
        async with client.post(f"{gw.url}{path}", headers=headers) as resp:
            await resp.read()
            return resp.status, resp.headers.get("Retry-After")

    first = asyncio.ensure_future(send("/", "first"))
    await eventually(lambda: replica.hits == 1, what="the slot taken")
    queued = [asyncio.ensure_future(send("/", f"standard{i}")) for i in range(2)]
    claims = asyncio.ensure_future(send("/", "claims", "critical"))  # not allowed: standard
    await eventually(lambda: gw.pools["default"].queued == 3, what="three waiting")
    status, retry_after = await send("/", "shed", "sheddable")
    assert status == 429 and retry_after is not None and int(retry_after) >= 1
    ops = asyncio.ensure_future(send("/ops", "ops", "critical"))
    await eventually(lambda: gw.pools["default"].queued == 4, what="the critical one waiting")
    release.set()
    results = await asyncio.gather(first, *queued, claims, ops)
    assert [s for s, _ in results] == [200] * 5
    assert served == ["first", "ops", "standard0", "standard1", "claims"]
