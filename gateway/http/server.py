"""The client listener: HTTP/1.1 on asyncio protocols, parsed by llhttp (httptools).

Why not aiohttp's server: with the upstream side on its own client, profiles of the
gateway put aiohttp's server machinery (request objects, the StreamResponse state
machine, separate writes for head and body) at the top of what was left. The proxy needs
a narrow server, and this is it:

* ``connection``: one client connection, its requests parsed and answered in order;
* ``exchange``: one request and its answer, as the handler sees them;
* here: the listener, the connection counts, the sweep that enforces every deadline,
  and the limits, which a reload may replace while it runs;
* every resource a client can hold is bounded (``Limits``; ``config.ClientLimits``): the request
  line (414), the header block and its field count (431), the time to send a head (408),
  a pause mid-body, the time a client may read nothing while its answer waits (then the
  connection is aborted and the replica's slot freed), pipelined requests, the request
  bodies held across all clients (503), and connections, in all and per address (at the
  cap the longest-idle keep-alive connection makes room, else 503). Timeouts are
  enforced by one sweep over the connections a few times a second rather than by a
  timer per request, so they cost the hot path a clock read.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.http.connection import Connection
from gateway.http.exchange import Exchange

log = logging.getLogger(__name__)

SWEEP_S = 1.0  # the longest pause between two sweeps for expired connections

Handler = Callable[[Exchange], Awaitable[None]]


class Limits(Protocol):
    """What one client may cost; the listener reads them on each use, so they may be
    replaced while it runs (``config.ClientLimits`` is one, with its defaults)."""

    @property
    def max_request_line_bytes(self) -> int: ...
    @property
    def max_header_bytes(self) -> int: ...
    @property
    def max_header_fields(self) -> int: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def max_connections_per_ip(self) -> int: ...
    @property
    def max_pipelined(self) -> int: ...
    @property
    def max_buffered_body_bytes(self) -> int: ...
    @property
    def header_timeout_s(self) -> float: ...
    @property
    def body_timeout_s(self) -> float: ...
    @property
    def write_timeout_s(self) -> float: ...
    @property
    def idle_timeout_s(self) -> float: ...


class Refusals(Protocol):
    """Where each refusal is counted, by reason (the gateway's ``Recorder`` is one)."""

    def client_refused(self, reason: str) -> None: ...


class HttpServer:
    """Listens on one address; ``close`` stops accepting, lets open requests finish
    (bounded), then closes every connection. ``limits`` may be replaced while it runs
    (a reload); they apply to what happens next."""

    def __init__(self, handler: Handler, limits: Limits, recorder: Refusals) -> None:
        self.handler = handler
        self.limits = limits
        self.recorder = recorder
        self.connections: set[Connection] = set()
        self.per_address: dict[str, int] = {}
        self.active = 0  # requests being answered
        self.body_bytes = 0  # request body bytes held, across all connections
        self.closing = False
        self._server: asyncio.base_events.Server | None = None
        self._drained: asyncio.Event | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Starts listening; returns the bound port (``port`` may be 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, backlog=1024, reuse_address=True
        )
        self._sweeper = loop.create_task(self._sweep())
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def admit(self, conn: Connection) -> str:
        """Count a new connection in, or say why not ("" when admitted). At the cap the
        keep-alive connection idle the longest is closed to make room: idle ones are
        the cheapest to lose, and a flood of them must not lock new clients out."""
        limits = self.limits
        if len(self.connections) >= limits.max_connections and not self._close_longest_idle():
            return "connections"
        per_address = self.per_address.get(conn.remote, 0)
        if limits.max_connections_per_ip and per_address >= limits.max_connections_per_ip:
            return "connections_per_ip"
        self.connections.add(conn)
        self.per_address[conn.remote] = per_address + 1
        conn.counted = True
        return ""

    def forget(self, conn: Connection) -> None:
        if not conn.counted:
            return
        conn.counted = False
        self.connections.discard(conn)
        left = self.per_address[conn.remote] - 1
        if left:
            self.per_address[conn.remote] = left
        else:
            del self.per_address[conn.remote]

    def _close_longest_idle(self) -> bool:
        idle = [
            c
            for c in self.connections
            if c.task is None
            and c.lingering_since is None
            and (c.head_since is None or not c.received)
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since)
        self.forget(oldest)  # now, not when its close completes: the newcomer takes its place
        oldest.close()
        return True

    async def _sweep(self) -> None:
        """Let connections go past their deadlines, a few times per shortest timeout."""
        loop = asyncio.get_running_loop()
        while True:
            limits = self.limits
            shortest = min(limits.header_timeout_s, limits.write_timeout_s, limits.idle_timeout_s)
            await asyncio.sleep(min(SWEEP_S, shortest / 4))
            now = loop.time()
            for conn in list(self.connections):
                conn.expire(now, limits)

    async def close(self, drain_s: float) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()  # idle keep-alive: nothing to finish
        if self.active:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), drain_s)
            except TimeoutError:
                log.warning("drain timeout: closing %d open requests", self.active)
        for conn in list(self.connections):
            if conn.task is not None:
                conn.task.cancel()
            if conn.transport is not None:
                conn.transport.abort()

    def wake_drain(self) -> None:
        if self._drained is not None:
            self._drained.set()


def raise_open_files_limit() -> int:
    """Raise this process's descriptor limit to its hard limit, so that
    ``max_connections`` rather than a low default decides who is turned away; returns
    the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            log.warning("could not raise the open-files limit from %d to %d", soft, hard)
    return soft
