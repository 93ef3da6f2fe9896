"""Engine signals with real sockets: the gateway reads an LLM-like replica's /metrics
into the pool's view and exports it, a hostile replica (an endless body)
costs the other's figures nothing and has none, and turned off they are cleared."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from backends.llm.api import REPLICA, make_app
from backends.llm.replica import Settings
from gateway.config import parse_config
from tests.component.conftest import pool_config
from tests.conftest import eventually

FAST = {"enabled": True, "interval_s": 0.05, "timeout_s": 0.3}


def hostile() -> web.Application:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        while True:  # ends when the gateway gives up on it
            await response.write(b"vllm:num_requests_running 1\n" * 4096)
            await asyncio.sleep(0)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", endless)
    app.router.add_get("/health", ok)
    return app


async def test_engine_figures_are_read_exported_and_cleared(serve_app, gateway, client) -> None:  # type: ignore[no-untyped-def]
    llm_app = make_app(Settings(model="m"))
    llm_url, bad_url = await serve_app(llm_app), await serve_app(hostile())
    gw = await gateway(pool_config([llm_url, bad_url], engine_metrics=FAST))
    pool = gw.pools["default"]
    good, bad = (pool.replicas[r] for r in sorted(pool.replicas, key=lambda r: r != llm_url))
    await eventually(lambda: good.engine is not None, what="the engine's figures")
    assert good.engine is not None and (good.engine.running, good.engine.waiting) == (0, 0)
    assert good.engine.kv_usage == 0.0
    held = await llm_app[REPLICA].generate(list(range(64)), max_tokens=1000)  # one running
    await eventually(lambda: good.engine is not None and good.engine.running == 1, what="1 running")
    assert bad.engine is None  # its endless body is no figure
    async with client.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp:
        families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    (sample,) = families["gateway_replica_engine_running"].samples
    assert sample.labels["replica"] == good.id and sample.value == 1
    assert "gateway_replica_engine_age_seconds" in families
    llm_app[REPLICA].engine.cancel(held.seq)

    off = pool_config([llm_url], engine_metrics={"enabled": False})
    await gw.reload(parse_config(off))
    await eventually(lambda: all(r.engine is None for r in pool.replicas.values()), what="cleared")
