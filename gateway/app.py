"""The composition root: builds every part from a ``Config`` and owns their lifecycle.

Nothing else constructs long-lived objects, and nothing is global: tests start as many
gateways as they like in one process. Start order: client session, pools, probers, then
the admin and client listeners; stop order is the reverse, with the client listener
drained first (no new connections, in-flight requests finish up to ``drain_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from gateway.autoscaler import PoolAutoscaler
from gateway.config import Autoscale, Config
from gateway.drivers import Driver
from gateway.drivers.process import ProcessDriver
from gateway.gpus import GpuLedger, discover_gpus
from gateway.metrics import CONTENT_TYPE, PrometheusRecorder
from gateway.policies import make_policy
from gateway.pool import Pool
from gateway.prober import Prober
from gateway.proxy import Proxy, Router
from gateway.replica import Replica


def make_driver(kind: str, state_dir: str) -> Driver:
    if kind == "docker":
        from gateway.drivers.docker import DockerDriver  # only docker pools need the SDK

        driver: Driver = DockerDriver()
        return driver
    return ProcessDriver(Path(state_dir).expanduser() / "replicas")


def static_replica(url: str) -> Replica:
    parts = urlsplit(url)
    return Replica(id=parts.netloc, url=url)


class Gateway:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        drivers: dict[str, Driver] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.pools: dict[str, Pool] = {}
        self.autoscalers: dict[str, PoolAutoscaler] = {}
        self.drivers: dict[str, Driver] = dict(drivers or {})  # made on demand if not given
        self.ledger = GpuLedger([])
        self.recorder = PrometheusRecorder(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.AppRunner] = []
        self.port = 0  # bound ports, known after start() (config may ask for port 0)
        self.admin_port = 0

    async def start(self) -> None:
        config = self.config
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,  # bytes pass through exactly as the replica sent them
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # GPUs are host-wide: one ledger over every pool's GPUs, so none is given out twice
        gpu_ids = {
            gpu
            for settings in config.pools.values()
            if settings.autoscale is not None
            for gpu in discover_gpus(settings.autoscale.gpus)
        }
        self.ledger = GpuLedger(sorted(gpu_ids))
        for name, settings in config.pools.items():
            policy = make_policy(settings.policy, clock=self.clock, rng=self.rng)
            pool = Pool(name, settings, policy, self.clock, self.recorder)
            pool.set_replicas(static_replica(url) for url in settings.backends)
            self.pools[name] = pool
            self._spawn(Prober(pool, self.session).run())
            if settings.autoscale is not None:
                self._autoscale(pool, settings.autoscale)
        for driver in self.drivers.values():
            self._spawn(self._forward_hints(driver))
        router = Router([(route.path, self.pools[route.pool]) for route in config.routes])
        proxy = Proxy(router, self.session, self.recorder, self.clock)

        admin = web.Application()
        admin.router.add_get("/metrics", self._metrics)
        self.admin_port = await self._serve(admin, config.admin.host, config.admin.port, 5.0)

        app = web.Application(client_max_size=config.max_body_bytes)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        self.port = await self._serve(app, config.listen.host, config.listen.port, None)

    def _autoscale(self, pool: Pool, settings: Autoscale) -> None:
        driver = self.drivers.get(settings.driver)
        if driver is None:
            driver = make_driver(settings.driver, self.config.state_dir)
            self.drivers[settings.driver] = driver
        scaler = PoolAutoscaler(
            pool, settings, driver, self.ledger, self.session, self.clock, self.recorder
        )
        self.autoscalers[pool.name] = scaler
        self._spawn(scaler.run())

    async def _forward_hints(self, driver: Driver) -> None:
        """Driver events (a replica died) wake the pool's loop before its next tick."""
        async for pool_name in driver.events():
            scaler = self.autoscalers.get(pool_name)
            if scaler is not None:
                scaler.wake.set()

    async def _serve(self, app: web.Application, host: str, port: int, drain: float | None) -> int:
        runner = web.AppRunner(
            app,
            access_log=None,  # per-request logging is opt-in; it costs the hot path
            shutdown_timeout=self.config.drain_timeout_s if drain is None else drain,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        self._runners.insert(0, runner)  # the client listener, started last, stops first
        bound: int = runner.addresses[0][1]
        return bound

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(
            *(
                scaler.shutdown(stop_replicas=scaler.settings.on_exit == "stop")
                for scaler in self.autoscalers.values()
            )
        )
        for driver in self.drivers.values():
            await driver.close()
        await self.session.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"status": "ok"}), content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.recorder.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
