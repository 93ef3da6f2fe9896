"""Real servers on 127.0.0.1 for component tests: backends and in-process gateways."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Backend:
    """An aiohttp server on a free loopback port that counts the requests it got."""

    def __init__(self, handler: Handler) -> None:
        self.hits = 0
        self.handler = handler
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _count(self, request: web.Request) -> web.StreamResponse:
        if request.path != "/health":
            self.hits += 1
        return await self.handler(request)

    async def start(self, port: int = 0) -> Backend:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._count)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def pool_config(backends: list[str], **overrides: Any) -> dict[str, Any]:
    """A one-pool config on ephemeral ports; ``overrides`` are merged into the pool."""
    pool: dict[str, Any] = {
        "policy": "least_connections",
        "backends": backends,
        "health": {"interval_s": 0.1, "timeout_s": 0.5},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(pool.get(key), dict):
            pool[key] = {**pool[key], **value}
        else:
            pool[key] = value
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "routes": [{"path": "/", "pool": "default"}],
        "pools": {"default": pool},
        "drain_timeout_s": 2,
    }


@pytest.fixture
async def backend() -> AsyncIterator[Callable[[Handler], Awaitable[Backend]]]:
    started: list[Backend] = []

    async def make(handler: Handler) -> Backend:
        b = await Backend(handler).start()
        started.append(b)
        return b

    yield make
    for b in started:
        await b.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def ok_handler(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def crash(b: Backend) -> None:
    """Kill a backend abruptly: close its listener and reset every open connection."""
    assert b.runner is not None and b.runner.server is not None
    connections = list(b.runner.server.connections)
    for site in list(b.runner.sites):
        await site.stop()
    for handler in connections:
        if handler.transport is not None:
            handler.transport.abort()
