"""Active health checks: GET each replica's health path on an interval.

The I/O shell around ``health.ReplicaHealth``: it only turns HTTP results into
``pool.record_probe`` calls; the rise/fall hysteresis is decided there. Probes of one
round run concurrently, so one hung replica does not delay the verdict on the others.
"""

from __future__ import annotations

import asyncio
import logging
import random

import aiohttp

from gateway.dataplane.pool import Pool
from gateway.dataplane.replica import Replica

log = logging.getLogger(__name__)


class Prober:
    def __init__(self, pool: Pool, session: aiohttp.ClientSession) -> None:
        self.pool = pool
        self.session = session

    async def run(self) -> None:
        # A random phase keeps many gateways (or pools) from probing in lockstep.
        await asyncio.sleep(random.uniform(0, self.pool.settings.health.interval_s))
        while True:
            settings = self.pool.settings.health  # re-read: a reload may change it
            if settings.enabled:
                replicas = list(self.pool.replicas.values())
                await asyncio.gather(*(self._probe(r) for r in replicas))
            await asyncio.sleep(settings.interval_s)

    async def _probe(self, replica: Replica) -> None:
        settings = self.pool.settings.health
        try:
            async with self.session.get(
                replica.url + settings.path,
                timeout=aiohttp.ClientTimeout(total=settings.timeout_s),
                allow_redirects=False,
            ) as response:
                ok = 200 <= response.status < 300
        except (aiohttp.ClientError, OSError, TimeoutError):
            ok = False
        if replica.id in self.pool.replicas:
            self.pool.record_probe(replica, ok)
