"""Shared test helpers: polling instead of sleeping, and free loopback ports."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.control.drivers import free_port as free_port  # one definition, for tests

# Autoscaling with loops fast enough for a test to watch it happen.
FAST_SCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 4,
    "target_concurrency": 2,
    "stable_window_s": 3,
    "panic_window_s": 1,
    "scale_down_delay_s": 1,
    "tick_s": 0.2,
    "startup_timeout_s": 30,
    "drain_timeout_s": 10,
    "on_exit": "stop",
}


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    within: float = 5.0,
    interval: float = 0.02,
    what: str = "",
) -> float:
    """Wait until ``predicate()`` holds (it may be a coroutine function: an HTTP check)
    and return the seconds it took; fail naming ``what`` after ``within`` seconds."""
    began = time.monotonic()
    while True:
        held = predicate()
        if not isinstance(held, bool):
            held = await held
        if held:
            return time.monotonic() - began
        if time.monotonic() - began > within:
            raise AssertionError(f"not within {within} s: {what or 'the condition'}")
        await asyncio.sleep(interval)


@functools.cache
def _docker_unavailable() -> str | None:
    """Why no Docker engine can be used, or None when one answers."""
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as exc:
        return f"no Docker engine reachable ({type(exc).__name__}); run ../shared/docker-engine-up"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``docker`` skip without an engine, or fail when REQUIRE_DOCKER=1."""
    if item.get_closest_marker("docker") is None:
        return
    reason = _docker_unavailable()
    if reason is None:
        return
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


# A pool of sim replicas run by the process driver.
SIM_PROCESS = {
    "driver": "process",
    "command": ["{python}", "-m", "backends.sim", "--port", "{port}"],
}


def scaled_config(pool: str, autoscale: dict[str, Any]) -> dict[str, Any]:
    """A gateway on ephemeral ports whose one pool is autoscaled with fast loops."""
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "routes": [{"path": "/", "pool": pool}],
        "pools": {
            pool: {
                "policy": "least_connections",
                "max_inflight_per_replica": 4,
                "health": {"interval_s": 0.2, "timeout_s": 0.5},
                "autoscale": {**FAST_SCALING, **autoscale},
            }
        },
        "drain_timeout_s": 5,
    }


async def load_until(
    session: aiohttp.ClientSession,
    url: str,
    workers: int,
    done: asyncio.Event,
    json: dict[str, Any] | None = None,
) -> list[int]:
    """Closed-loop load: ``workers`` clients, one request after another, until ``done``;
    each posts ``json`` (a model's ``{"inputs": [1]}`` if None)."""
    statuses: list[int] = []
    body = {"inputs": [1]} if json is None else json

    async def worker() -> None:
        while not done.is_set():
            async with session.post(url, json=body) as resp:
                await resp.read()
                statuses.append(resp.status)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return statuses


async def scale_out_and_in(
    gw: Gateway, session: aiohttp.ClientSession, pool: str, within_s: float,
    path: str = "/predict", json: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Load ``pool`` until two replicas serve, then none; every request answered."""
    scaler = gw.autoscalers[pool]
    await eventually(lambda: scaler.count["ready"] == 1, within=within_s)
    done = asyncio.Event()
    url = f"{gw.url}{path}"  # type: ignore[attr-defined]
    load = asyncio.create_task(load_until(session, url, 6, done, json))
    await eventually(lambda: scaler.count["ready"] == 2, within=within_s, what="two replicas")
    done.set()
    assert set(await load) == {200}


@pytest.fixture
async def serve_app() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    """Serve aiohttp apps in-process on ephemeral ports of 127.0.0.1 (``url = await
    serve_app(app)``); all are cleaned up afterwards."""
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> str:
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield serve
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """Start in-process gateways from config dicts; all are stopped afterwards."""
    started: list[Gateway] = []

    async def make(config: dict[str, Any], **kwargs: Any) -> Gateway:
        gw = Gateway(parse_config(config), **kwargs)
        await gw.start()
        gw.url = f"http://127.0.0.1:{gw.port}"  # type: ignore[attr-defined]
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.stop()
