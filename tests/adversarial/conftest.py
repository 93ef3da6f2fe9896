"""One gateway and one recording replica per test module, on 127.0.0.1.

Hypothesis runs each property's examples one after another against the same pair (a
module-scoped fixture on a module-scoped event loop, so no example pays for a start);
every example checks at its end that the gateway is back at rest, so nothing one example
leaves behind can pass for another's doing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import uvloop
from hypothesis import HealthCheck, Phase, settings

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.dataplane.pool import Pool
from gateway.http.server import HttpServer
from tests.adversarial.wire import RecordingReplica
from tests.conftest import eventually

# Small limits, so that requests past them are cheap to build and send.
LIMITS: dict[str, Any] = {
    "max_request_line_bytes": 2048,
    "max_header_bytes": 8192,
    "max_header_fields": 40,
    "max_pipelined": 3,  # below most pipelined streams here: pausing the reader is exercised
}
MAX_BODY_BYTES = 512 * 1024  # above the server's 256 KiB high-water mark

# Deterministic in CI: a fixed derivation of every example, no example database. And
# bounded: a failing example costs seconds (it waits out a timeout) and shrinking runs
# hundreds of them, so CI reports the first failing example as found (with its blob for
# @reproduce_failure); ADVERSARIAL_SHRINK=1 shrinks it to a minimal one.
SHRINK = os.environ.get("ADVERSARIAL_SHRINK") == "1"
settings.register_profile(
    "adversarial",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    phases=list(Phase) if SHRINK else [Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Every test here runs on both loops: uvloop's, which ``gateway run`` uses, and
    asyncio's own, which the rest of the tests use (their transports differ in how they
    pause, close and report a peer's hang-up)."""
    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def gateway_config(replica_port: int, **pool: Any) -> dict[str, Any]:
    """One replica, no retries or hedges (each would be a second copy of a request), no
    health probes (the replica sees only what clients sent); ``pool`` overrides."""
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "routes": [{"path": "/", "pool": "default"}],
        "max_body_bytes": MAX_BODY_BYTES,
        "limits": LIMITS,
        "pools": {
            "default": {
                "policy": "least_connections",
                "backends": [f"http://127.0.0.1:{replica_port}"],
                "health": {"enabled": False},
                "hedging": {"enabled": False},
                "retries": {"attempts": 1},
                **pool,
            }
        },
        "drain_timeout_s": 1,
    }


@dataclass
class Stack:
    gateway: Gateway
    replica: RecordingReplica
    pool_overrides: dict[str, Any]

    @classmethod
    async def start(cls, pool_overrides: dict[str, Any]) -> Stack:
        replica = await RecordingReplica().start()
        gw = Gateway(parse_config(gateway_config(replica.port, **pool_overrides)))
        await gw.start()
        return cls(gw, replica, pool_overrides)

    async def stop(self) -> None:
        await self.gateway.stop()
        await self.replica.stop()

    async def fresh(self) -> None:
        """Called as an example begins: if the one before left the gateway holding
        something (it failed), start a new pair, so that Hypothesis, shrinking, sees
        each example fail or pass on its own."""
        if not self.at_rest():
            await self.stop()
            new = await Stack.start(self.pool_overrides)
            self.gateway, self.replica = new.gateway, new.replica

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def pool(self) -> Pool:
        return self.gateway.pools["default"]

    @property
    def listener(self) -> HttpServer:
        listener = self.gateway._listener
        assert listener is not None
        return listener

    def at_rest(self) -> bool:
        listener, pool = self.listener, self.pool
        return (
            pool.inflight == 0
            and pool.queued == 0
            and listener.active == 0
            and listener.body_bytes == 0
            and not listener.connections
        )

    def state(self) -> str:
        listener, pool = self.listener, self.pool
        return (
            f"inflight={pool.inflight} queued={pool.queued} active={listener.active} "
            f"body_bytes={listener.body_bytes} connections={len(listener.connections)}"
        )

    async def settle(self, within: float = 1.0) -> None:
        """Wait until no request is in flight anywhere in the gateway and no client
        connection is open; fail naming what is still held."""
        try:
            await eventually(self.at_rest, within=within, interval=0.005)
        except AssertionError:
            raise AssertionError(f"the gateway did not come to rest: {self.state()}") from None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """The module's gateway and replica; a module's ``POOL`` dict overrides pool keys."""
    pair = await Stack.start(getattr(request.module, "POOL", {}))
    try:
        yield pair
    finally:
        await pair.stop()
