"""Tools for the chaos tests (``test_chaos.py``): a switchable relay in front of the Docker
engine's socket, an open-loop load of real requests, and the containers of one gateway
instance as the engine lists them.

Nothing here touches the daemon itself: an "outage" is the relay refusing connections or
holding them, and only the gateway under test is pointed at the relay (``DOCKER_HOST``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp

from gateway.control.drivers import INSTANCE, MANAGED_BY, MANAGER, POOL

Mode = Literal["relay", "refuse", "hang"]
LINGER_S = 3.0  # a held request whose client left still reaches the engine: wait for its answer
MAX_LOAD_S = 150.0  # no load runs longer than this, whatever the test does


def engine_address() -> tuple[str, str]:
    """("unix", path) or ("tcp", "host:port") of the engine the test's own client uses."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    parts = urlsplit(host)
    if parts.scheme == "unix":
        return "unix", parts.path
    if parts.scheme in ("tcp", "http"):
        return "tcp", parts.netloc
    raise RuntimeError(f"DOCKER_HOST={host}: the relay speaks unix:// and tcp:// only")


class EngineRelay:
    """A unix socket (``path``) relaying every byte to and from the real engine, until told
    to fail like an engine does:

    - ``refuse()``: the engine is down. Open connections are cut (as a dying daemon cuts
      them, the event stream included) and new ones are refused (ECONNREFUSED).
    - ``hang()``: the engine hangs, as a paused dockerd does: connections are accepted and
      what clients send is read, but nothing reaches the engine and nothing comes back.
      ``restore()`` then delivers everything held, late: requests whose client timed out
      and left are still carried out by the engine (a create that "failed" makes its
      container after all), their answers thrown away.
    - ``restore()``: back to relaying.

    ``connections`` counts the connections accepted so far (refused ones never reach it:
    the relay stops listening and the kernel refuses them).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.upstream = engine_address()  # before the test points DOCKER_HOST at the relay
        self.mode: Mode = "relay"
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._accept, self.path)

    async def refuse(self) -> None:
        self.mode = "refuse"
        if self._server is not None:
            self._server.close()  # stops listening; the socket file stays: ECONNREFUSED
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._flowing.set()  # pumps waiting on a hang see their sockets gone and end

    def hang(self) -> None:
        self.mode = "hang"
        self._flowing.clear()

    async def restore(self) -> None:
        self.mode = "relay"
        if self._server is None:
            await self.start()
        self._flowing.set()

    async def close(self) -> None:
        self._flowing.set()
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=LINGER_S + 2)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        kind, address = self.upstream
        try:
            if kind == "unix":
                up_reader, up_writer = await asyncio.open_unix_connection(address)
            else:
                host, _, port = address.rpartition(":")
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            answers = asyncio.ensure_future(self._pump(up_reader, writer))
            await self._pump(reader, up_writer)  # until the client leaves
            # what it sent may have been held and only just delivered: let the engine
            # answer (to nobody, if the client left) before the engine's side is closed
            await asyncio.wait([answers], timeout=LINGER_S)
            answers.cancel()
            with contextlib.suppress(BaseException):
                await answers
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                await self._flowing.wait()  # a hang holds the bytes here
                if dst.transport.is_closing():
                    continue  # the reader left: the engine's answer goes nowhere
                dst.write(data)
                await dst.drain()


@dataclass(frozen=True, slots=True)
class Outcome:
    sent: float  # time.monotonic() when the request was sent
    done: float
    status: int | None  # None: no answer (``error`` says why)
    error: str = ""
    replica: str = ""  # the X-Replica header: the sim's --name, here the container's id


class SteadyLoad:
    """Open-loop load: ``rps`` requests a second, each sent on time whether or not the
    ones before have been answered (so an outage shows as errors, not as a client that
    waited), each bounded by ``timeout_s``; at most ``MAX_LOAD_S`` of it."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, rps: float = 20, timeout_s: float = 10
    ) -> None:
        self.session = session
        self.url = url
        self.rps = rps
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> SteadyLoad:
        self._runner = asyncio.create_task(self._run())
        return self

    async def stop(self) -> list[Outcome]:
        self._stop.set()
        if self._runner is not None:
            await self._runner
        if self._inflight:
            await asyncio.wait(self._inflight)  # each is bounded by its timeout
        self.outcomes.sort(key=lambda o: o.sent)
        return self.outcomes

    def errors(self, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200 and since <= o.sent < until]

    def sent(self, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(since <= o.sent < until for o in self.outcomes)

    async def _run(self) -> None:
        began = time.monotonic()
        for i in range(int(MAX_LOAD_S * self.rps)):
            delay = began + i / self.rps - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            task = asyncio.create_task(self._one())
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _one(self) -> None:
        sent = time.monotonic()
        try:
            async with self.session.post(
                self.url, data=b'{"inputs": [1]}', timeout=self.timeout
            ) as resp:
                await resp.read()
                outcome = Outcome(
                    sent, time.monotonic(), resp.status, replica=resp.headers.get("X-Replica", "")
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            outcome = Outcome(sent, time.monotonic(), None, type(exc).__name__)
        self.outcomes.append(outcome)


def ours(instance: str, pool: str | None = None) -> list[str]:
    """The engine's label filter for the containers of gateway ``instance`` (and ``pool``)."""
    labels = [f"{MANAGED_BY}={MANAGER}", f"{INSTANCE}={instance}"]
    return labels if pool is None else [*labels, f"{POOL}={pool}"]


def containers(client: Any, instance: str, pool: str | None = None) -> list[dict[str, Any]]:
    """Every container (any state) of ``instance``, as one listing call returns them."""
    rows: list[dict[str, Any]] = client.api.containers(
        all=True, filters={"label": ours(instance, pool)}
    )
    return rows


def running(client: Any, instance: str, pool: str | None = None) -> list[dict[str, Any]]:
    return [c for c in containers(client, instance, pool) if c["State"] == "running"]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, _, value = line.rpartition(" ")
        sample, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sample == name and got == want:
            return float(value)
    return 0.0
