"""Engine signals: each replica's ``/metrics`` read on an interval into ``Replica.engine``.

The I/O shell around ``engine_metrics.parse``, a sibling of the prober. Each replica is
read by a loop of its own, so a slow or hung one delays nobody else's figures. A body is
read up to ``MAX_BYTES`` at most and scanned, not walked line by line; anything else a
hostile replica sends is a failed read. A failed read leaves the last figure (its ``at``
shows its age: policies use only fresh ones); ``STALE_READS`` failures in a row clear
it. Off (``enabled: false``, the default) the figures are cleared, and nothing is read.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import aiohttp

from gateway.dataplane.engine_metrics import parse
from gateway.dataplane.pool import Pool
from gateway.dataplane.replica import EngineLoad, Replica

MAX_BYTES = 1 << 20  # an engine's metrics are tens of KB; more is not an engine
STALE_READS = 4


class EngineScraper:
    def __init__(
        self, pool: Pool, session: aiohttp.ClientSession, clock: Callable[[], float]
    ) -> None:
        self.pool = pool
        self.session = session
        self.clock = clock
        self._loops: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Keep one reading loop per replica of the pool while scraping is on."""
        try:
            while True:
                settings = self.pool.settings.engine_metrics
                wanted = self.pool.replicas if settings.enabled else {}
                for rid in [rid for rid in self._loops if rid not in wanted]:
                    self._loops.pop(rid).cancel()
                for rid, replica in wanted.items():
                    if rid not in self._loops:
                        self._loops[rid] = asyncio.create_task(self._read_on(replica))
                if not settings.enabled:
                    for replica in self.pool.replicas.values():
                        replica.engine = None
                await asyncio.sleep(settings.interval_s)
        finally:
            for loop in self._loops.values():
                loop.cancel()

    async def _read_on(self, replica: Replica) -> None:
        # a random phase keeps the replicas (and many gateways) from being read in lockstep
        await asyncio.sleep(random.uniform(0, self.pool.settings.engine_metrics.interval_s))
        failures = 0
        while True:
            settings = self.pool.settings.engine_metrics
            load = await self._read(replica, settings.path, settings.timeout_s)
            if load is not None:
                before, replica.engine, failures = replica.engine, load, 0
                self.pool.engine_read(replica, before)
            else:
                failures += 1
                if failures >= STALE_READS:
                    replica.engine = None
            await asyncio.sleep(settings.interval_s)

    async def _read(self, replica: Replica, path: str, timeout_s: float) -> EngineLoad | None:
        try:
            async with self.session.get(
                replica.url + path,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    return None
                body = await response.content.read(MAX_BYTES + 1)
                while len(body) <= MAX_BYTES and not response.content.at_eof():
                    more = await response.content.read(MAX_BYTES + 1 - len(body))
                    if not more:
                        break
                    body += more
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None
        if len(body) > MAX_BYTES:
            return None
        return parse(body, self.clock())
