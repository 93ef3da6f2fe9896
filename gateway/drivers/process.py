"""The process driver: replicas as local subprocesses on free loopback ports.

The no-Docker runtime, for the quick start and for fast tests; the same semantics as the
Docker driver (the autoscaler cannot tell them apart) except one: a subprocess has no
labels to be found by after a restart, so replicas live and die with the gateway. Each
child runs in its own session, so a signal to the gateway's process group does not reach
it before the gateway drains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

from gateway.drivers import Instance, ReplicaSpec


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class ProcessDriver:
    def __init__(self, cwd: str | None = None) -> None:
        self.cwd = cwd
        self._children: dict[str, tuple[Instance, asyncio.subprocess.Process]] = {}
        self._events: asyncio.Queue[str] = asyncio.Queue()
        self._watchers: set[asyncio.Task[None]] = set()

    async def list(self, pool: str) -> list[Instance]:
        return [
            replace(instance, state="running" if proc.returncode is None else "exited")
            for instance, proc in self._children.values()
            if instance.pool == pool
        ]

    async def start(self, spec: ReplicaSpec) -> Instance:
        port = free_port()
        argv = [arg.replace("{port}", str(port)) for arg in spec.command]
        env = {**os.environ, **spec.env, "PORT": str(port)}
        if spec.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_ids)
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=self.cwd, env=env, start_new_session=True, stdin=asyncio.subprocess.DEVNULL
        )
        instance = Instance(
            replica_id=spec.replica_id,
            pool=spec.pool,
            state="running",
            url=f"http://127.0.0.1:{port}",
            gpu_ids=spec.gpu_ids,
            handle=str(proc.pid),
        )
        self._children[spec.replica_id] = (instance, proc)
        watcher = asyncio.create_task(self._watch(spec.pool, proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return instance

    async def stop(self, instance: Instance, timeout_s: float) -> None:
        entry = self._children.pop(instance.replica_id, None)
        if entry is None:
            return
        proc = entry[1]
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def events(self) -> AsyncIterator[str]:
        while True:
            yield await self._events.get()

    async def close(self) -> None:
        """Children are stopped by the autoscaler; here only the watchers end."""
        for task in list(self._watchers):
            task.cancel()

    async def _watch(self, pool: str, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        self._events.put_nowait(pool)
