"""The composition root: builds every part from a ``Config`` and owns their lifecycle.

Nothing else constructs long-lived objects, and nothing is global: tests start as many
gateways as they like in one process. Start order: client session, pools (each with its
prober and, if autoscaled, its reconcile loop), then the admin and client listeners.
Stop order is the reverse, the client listener first: it stops accepting, in-flight
requests finish (up to ``drain_timeout_s``), then the rest closes.

``reload`` applies a new, already validated config to the running parts without dropping
a request: pools are updated in place (limits, policy, health, autoscale targets),
added, or drained and removed; routes are swapped in one assignment; the client listener
restarts only when its address changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway.config import Admin as AdminSettings
from gateway.config import Autoscale, Config, ConfigError, load_config
from gateway.config import Pool as PoolSettings
from gateway.control.autoscaler import PoolAutoscaler
from gateway.control.drivers import Driver
from gateway.control.drivers.identity import instance_id
from gateway.control.drivers.process import ProcessDriver
from gateway.control.gpus import GpuLedger, discover_gpus
from gateway.dataplane.policies import Policy, make_policy
from gateway.dataplane.pool import Pool
from gateway.dataplane.priority import RANKS, Target
from gateway.dataplane.prober import Prober
from gateway.dataplane.proxy import Proxy
from gateway.dataplane.replica import Replica
from gateway.dataplane.routing import Router
from gateway.dataplane.scraper import EngineScraper
from gateway.http.client import Upstream
from gateway.http.exchange import Exchange
from gateway.http.server import HttpServer, raise_open_files_limit
from gateway.ops.admin import AdminApi, Refused
from gateway.ops.metrics import PrometheusRecorder
from gateway.ops.view import GatewayView, snapshot

log = logging.getLogger("gateway")
HEALTHY_BODY = orjson.dumps({"status": "ok"})


def static_replica(url: str) -> Replica:
    return Replica(id=urlsplit(url).netloc, url=url)


def driver_key(settings: Autoscale) -> str:
    return settings.driver if settings.driver == "process" else f"docker/{settings.reach}"


class Gateway:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        drivers: dict[str, Driver] | None = None,
        config_path: str | Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.rng = rng or random.Random()
        self.pools: dict[str, Pool] = {}
        self.autoscalers: dict[str, PoolAutoscaler] = {}
        self.drivers: dict[str, Driver] = dict(drivers or {})  # made on demand if not given
        self.ledger = GpuLedger([])
        self.recorder = PrometheusRecorder(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchers: dict[str, asyncio.Task[None]] = {}  # by pool: health checks, engine reads
        self._scaler_tasks: dict[str, asyncio.Task[None]] = {}  # by pool: its reconcile loop
        self._listener: HttpServer | None = None
        self._admin: web.AppRunner | None = None
        self._reload_lock = asyncio.Lock()
        self.port = 0  # bound ports, known after start() (config may ask for port 0)
        self.admin_port = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        # For the control plane's own requests (health probes, readiness); requests from
        # clients go through the leaner ``Upstream``.
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        # GPUs are host-wide: one ledger over every pool's GPUs, so none is given out twice
        # (asking NVML loads a library and may wait on the driver: off the loop)
        settings_of = [s.autoscale.gpus for s in config.pools.values() if s.autoscale is not None]
        found = await asyncio.gather(*(asyncio.to_thread(discover_gpus, g) for g in settings_of))
        self.ledger = GpuLedger(sorted({gpu for gpus in found for gpu in gpus}))
        for name, settings in config.pools.items():
            self._add_pool(name, settings)
        self.upstream = Upstream()
        self.proxy = Proxy(self._router(config), self.upstream, self.recorder, self.clock)
        self.proxy.max_body_bytes = config.max_body_bytes
        self.proxy.trusted_proxies = config.trusted_proxies

        self.admin_api = AdminApi(self)
        await asyncio.to_thread(self.admin_api.refresh_token)  # may read a token file
        self._admin, self.admin_port = await self._serve_admin(config.admin.host, config.admin.port)
        raise_open_files_limit()
        await self._start_listener()
        if config.watch_config and self.config_path is not None:
            self._spawn(self._watch_config(Path(self.config_path)))

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.close(self.config.drain_timeout_s)
        if self._admin is not None:
            await self._admin.cleanup()
        for task in [*self._tasks, *self._watchers.values(), *self._scaler_tasks.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(
            *(
                scaler.shutdown(stop_replicas=scaler.settings.on_exit == "stop")
                for scaler in self.autoscalers.values()
            )
        )
        for driver in self.drivers.values():
            await driver.close()
        self.upstream.close()
        await self.session.close()

    # -- what the admin API sees and does (ops.admin.Operable) ---------------------------

    @property
    def admin_settings(self) -> AdminSettings:
        return self.config.admin

    def view(self) -> GatewayView:
        return snapshot(self.pools, self.autoscalers, self.ledger)

    def scale(self, pool: str, bounds: Mapping[str, int]) -> None:
        if pool not in self.pools:
            raise Refused(404, f"no pool {pool!r}")
        scaler = self.autoscalers.get(pool)
        if scaler is None:
            raise Refused(409, f"pool {pool!r} is not autoscaled")
        try:  # the config's own bounds, not a second copy of them
            settings = scaler.settings.model_validate({**scaler.settings.model_dump(), **bounds})
        except ValidationError as exc:
            raise Refused(400, exc.errors()[0]["msg"]) from None
        if settings.max_replicas < settings.min_replicas:
            raise Refused(400, "min_replicas over max_replicas")
        scaler.apply(settings)
        scaler.wake.set()

    def drain(self, pool: str, replica: str) -> None:
        target = self.pools.get(pool)
        if target is None:
            raise Refused(404, f"no pool {pool!r}")
        scaler = self.autoscalers.get(pool)
        drained = scaler.drain(replica) if scaler is not None else target.drain(replica)
        if not drained:  # a static replica drained stays out until a reload or a restart
            raise Refused(404, f"no ready replica {replica!r} in pool {pool!r}")

    # -- reload ------------------------------------------------------------------------

    async def reload_from_file(self) -> list[str]:
        """Re-read the config file and apply it; returns the errors (then nothing changed)."""
        if self.config_path is None:
            return ["<file>: the gateway was not started from a file"]
        try:
            config = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            log.error("reload refused, the running config stays", extra={"errors": exc.errors})
            self.recorder.config_reload(ok=False)
            return exc.errors
        await self.reload(config)
        return []

    async def reload(self, new: Config) -> None:
        async with self._reload_lock:
            old, self.config = self.config, new
            for name in old.pools.keys() - new.pools.keys():
                await self._remove_pool(name)
            for name, settings in new.pools.items():
                if name in self.pools:
                    await self._update_pool(self.pools[name], old.pools[name], settings)
                else:
                    self._add_pool(name, settings)
            self.proxy.router = self._router(new)
            self.proxy.max_body_bytes = new.max_body_bytes
            self.proxy.trusted_proxies = new.trusted_proxies
            if self._listener is not None:
                self._listener.limits = new.limits
            logging.getLogger().setLevel(new.log_level.upper())
            if new.listen != old.listen and self._listener is not None:
                previous = self._listener
                await self._start_listener()
                self._spawn(previous.close(new.drain_timeout_s))
            if (new.admin.host, new.admin.port) != (old.admin.host, old.admin.port):
                log.warning("admin address changes take effect at the next start")
            if new.state_dir != old.state_dir:
                log.warning("state_dir changes take effect at the next start")
            self.recorder.config_reload(ok=True)
            log.info("config reloaded")

    async def _watch_config(self, path: Path, interval_s: float = 1.0) -> None:
        """Reload when the file's modification time changes (polling: works on every
        filesystem, bind mounts included, with no extra dependency)."""

        def mtime() -> int:
            with contextlib.suppress(OSError):
                return path.stat().st_mtime_ns
            return 0

        seen = await asyncio.to_thread(mtime)
        while True:
            await asyncio.sleep(interval_s)
            current = await asyncio.to_thread(mtime)
            if current != seen:
                seen = current
                await self.reload_from_file()

    # -- pools -------------------------------------------------------------------------

    def _add_pool(self, name: str, settings: PoolSettings) -> None:
        pool = Pool(name, settings, self._policy(settings), self.clock, self.recorder)
        pool.set_replicas(static_replica(url) for url in settings.backends)
        self.pools[name] = pool
        self._watchers[name] = asyncio.create_task(self._watch_replicas(pool))
        if settings.autoscale is not None:
            self._autoscale(pool, settings.autoscale)

    async def _watch_replicas(self, pool: Pool) -> None:
        """The pool's active health checks and, where on, its engine-signal reads."""
        scraper = EngineScraper(pool, self.session, self.clock)
        await asyncio.gather(Prober(pool, self.session).run(), scraper.run())

    def _policy(self, settings: PoolSettings) -> Policy:
        return make_policy(settings.policy, clock=self.clock, rng=self.rng)

    async def _update_pool(self, pool: Pool, old: PoolSettings, new: PoolSettings) -> None:
        if new.policy != old.policy:
            pool.use_policy(self._policy(new))
        pool.apply(new)
        scaler = self.autoscalers.get(pool.name)
        same_driver = (
            old.autoscale is not None
            and new.autoscale is not None
            and driver_key(old.autoscale) == driver_key(new.autoscale)
        )
        if scaler is not None and new.autoscale is not None and same_driver:
            scaler.apply(new.autoscale)
            return
        if scaler is not None:  # autoscaling off, or another driver: drain the old replicas
            await self._stop_autoscaler(pool.name)
        if new.autoscale is not None:
            self._autoscale(pool, new.autoscale)
        else:
            pool.set_replicas(static_replica(url) for url in new.backends)

    async def _remove_pool(self, name: str) -> None:
        """Routes no longer lead here; managed replicas drain and stop."""
        if name in self.autoscalers:
            await self._stop_autoscaler(name)
        self._watchers.pop(name).cancel()
        self.pools.pop(name)

    def _autoscale(self, pool: Pool, settings: Autoscale) -> None:
        key = driver_key(settings)
        driver = self.drivers.get(key)
        if driver is None:
            driver = self.drivers[key] = self._make_driver(settings)
            self._spawn(self._forward_hints(driver))
        scaler = PoolAutoscaler(
            pool, settings, driver, self.ledger, self.session, self.clock, self.recorder,
            Path(self.config.state_dir).expanduser(),
        )  # fmt: skip
        self.autoscalers[pool.name] = scaler
        self._scaler_tasks[pool.name] = asyncio.create_task(scaler.run())
        pool.attach(scaler)

    async def _stop_autoscaler(self, name: str) -> None:
        scaler = self.autoscalers.pop(name)
        self.pools[name].attach(None)
        task = self._scaler_tasks.pop(name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await scaler.shutdown(stop_replicas=True)

    def _make_driver(self, settings: Autoscale) -> Driver:
        state_dir = Path(self.config.state_dir).expanduser()
        instance = instance_id(self.config.cluster, state_dir)  # whose replicas are ours
        if settings.driver == "docker":
            # imported here: only docker pools need the SDK
            from gateway.control.drivers.docker import DockerDriver

            docker_driver: Driver = DockerDriver(instance=instance, reach=settings.reach)
            return docker_driver
        return ProcessDriver(state_dir / "replicas", instance)

    async def _forward_hints(self, driver: Driver) -> None:
        """Driver events (a replica died) wake the pool's loop before its next tick."""
        async for pool_name in driver.events():
            scaler = self.autoscalers.get(pool_name)
            if scaler is not None:
                scaler.wake.set()

    def _router(self, config: Config) -> Router[Target[Pool]]:
        return Router(
            [
                (
                    r.path,
                    Target(self.pools[r.pool], RANKS[r.priority], r.priority_header, r.deadline_s),
                    r.models,
                )
                for r in config.routes
            ]
        )

    # -- listeners ---------------------------------------------------------------------

    async def _start_listener(self) -> None:
        self._listener = HttpServer(self._dispatch, self.config.limits, self.recorder)
        self.port = await self._listener.start(self.config.listen.host, self.config.listen.port)

    async def _dispatch(self, exchange: Exchange) -> None:
        if exchange.path == "/healthz" and exchange.method == "GET":
            exchange.respond(200, [("Content-Type", "application/json")], HEALTHY_BODY)
            return
        await self.proxy.handle(exchange)

    async def _serve_admin(self, host: str, port: int) -> tuple[web.AppRunner, int]:
        # access_log off: per-request logs are the proxy's, at debug level
        runner = web.AppRunner(self.admin_api.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        bound: int = runner.addresses[0][1]
        return runner, bound

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
