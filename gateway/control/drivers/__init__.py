"""The driver interface: how the autoscaler starts, lists and stops replicas.

The autoscaler speaks only this interface; each implementation hides one runtime
(``docker``: containers through the Docker API; ``process``: local subprocesses). A driver
is a thin, stateless-as-possible adapter: it never decides anything. It touches only
replicas it created, which carry the gateway's labels and its instance id
(``drivers.identity``), so several gateways (or other software) can share one engine safely.

All methods are coroutines; a driver whose library blocks (the docker SDK) runs those calls
in threads, never on the event loop.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gateway.control.tiers import Tier as Tier  # (what a driver offers)

# Labels on everything a driver creates. They are the only record the gateway keeps outside
# its own memory: after a restart, replicas and GPU assignments are rebuilt from them.
MANAGED_BY = "io.inference-gateway.managed-by"
POOL = "io.inference-gateway.pool"
REPLICA = "io.inference-gateway.replica"
INSTANCE = "io.inference-gateway.instance"  # the gateway's instance id: whose replica it is
GPUS = "io.inference-gateway.gpus"  # comma-separated device ids, "" for none
MANAGER = "inference-gateway"

InstanceState = Literal["created", "running", "paused", "exited"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, for a replica a driver starts on this machine (the
    tests and the load harness take theirs here too). Another process may take it before
    the replica binds it: the replica then fails to start, which readiness reports."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """What to start: everything a driver needs, already decided by the autoscaler."""

    pool: str
    replica_id: str  # unique across restarts, e.g. "default-3f9c2a"
    image: str
    command: tuple[str, ...] = ()
    port: int = 8000  # the port the server listens on inside its container
    env: Mapping[str, str] = field(default_factory=dict)
    network: str = "bridge"
    gpu_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Instance:
    """What a driver observes of one replica it manages."""

    replica_id: str
    pool: str
    state: InstanceState
    url: str | None  # base URL the gateway reaches it at, once known
    gpu_ids: tuple[str, ...] = ()
    handle: str = ""  # the runtime's own id: container id, pid


class Driver(Protocol):
    tiers: frozenset[Tier]  # the warm tiers this runtime can hold a replica in (not asleep:
    # that one is the engine's)

    async def list(self, pool: str) -> list[Instance]:
        """Every replica of ``pool`` this gateway manages, in any state."""
        ...

    async def start(self, spec: ReplicaSpec) -> Instance:
        """Create and start a replica; returns at once, readiness is the autoscaler's
        business."""
        ...

    async def stop(self, instance: Instance, timeout_s: float) -> None:
        """Stop (SIGTERM, then SIGKILL after ``timeout_s``) and remove; idempotent."""
        ...

    async def pause(self, instance: Instance) -> None:
        """Freeze a running replica (the ``paused`` tier): no CPU, memory kept."""
        ...

    async def halt(self, instance: Instance, timeout_s: float) -> None:
        """Stop a replica (SIGTERM, SIGKILL after ``timeout_s``) but keep it (the
        ``stopped`` tier), paused or not."""
        ...

    async def wake(self, instance: Instance) -> Instance:
        """Bring a paused or stopped replica back to running; returns it as it is then
        (a restarted container may have a new address). Readiness is the caller's."""
        ...

    def events(self) -> AsyncIterator[str]:
        """Pool names whose replicas changed outside the gateway (died, were killed):
        hints that make the reconcile loop run early; it never depends on them."""
        ...

    async def close(self) -> None: ...
