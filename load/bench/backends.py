"""A scenario's sim replicas, and the actions done to them while the load runs.

One process per replica (not one process serving every port, as ``--ports`` can) so that
a single replica can be stopped, killed and restarted. Replica ``i`` is named ``r<i>``: the name
comes back in every answer's ``X-Replica`` header, through any proxy, which is how the
load generator counts each replica's share.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from gateway.control.drivers import free_port
from load.bench.scenarios import Action, Replica
from load.procs import Procs, sim_command, wait_for_url


class Backends:
    def __init__(self, procs: Procs, replicas: Sequence[Replica]) -> None:
        self.procs = procs
        self.replicas = list(replicas)
        self.ports = [free_port() for _ in self.replicas]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]

    def _start(self, i: int) -> None:
        settings = dataclasses.asdict(self.replicas[i])  # every field is a sim flag
        self.procs.start(f"r{i}", sim_command([self.ports[i]], name=f"r{i}", seed=i, **settings))

    async def start(self) -> None:
        for i in range(len(self.replicas)):
            self._start(i)
        for i, url in enumerate(self.urls):
            await wait_for_url(f"{url}/health", within=30, proc=self.procs.procs[f"r{i}"])

    async def act(self, action: Action) -> None:
        """Do ``action``; a restarted replica is left to come up while the load goes on."""
        i = action.replica
        if action.do == "stop":
            self.procs.pause(f"r{i}")
        elif action.do == "kill":
            self.procs.stop(f"r{i}", kill=True)
        elif action.do == "restart":
            self._start(i)
        else:
            changes: dict[str, Any] = dict(action.changes)
            timeout = aiohttp.ClientTimeout(total=5)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(f"{self.urls[i]}/control", json=changes) as resp,
            ):
                resp.raise_for_status()

    async def play(
        self, actions: Sequence[Action], duration: float, start: float
    ) -> list[dict[str, Any]]:
        """Do each action at its time (``start`` is the load's, on ``time.perf_counter``);
        returns when each was done, in s from ``start``."""
        done = []
        for action in sorted(actions, key=lambda a: a.at):
            await asyncio.sleep(max(0.0, start + action.at * duration - time.perf_counter()))
            await self.act(action)
            done.append({"t": time.perf_counter() - start, "action": action.describe()})
        return done
