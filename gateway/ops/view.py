"""The read-only view that the admin API and the metrics read: frozen snapshots of the
pools, their autoscalers and the GPU ledger, taken on the event loop in one pass
(``snapshot``). A scrape rendered in a worker thread then reads only these, never the
live state that a reload or the autoscaler changes on the loop, and neither reader
reaches into the planes (the import contract in ``pyproject.toml``: of ``ops``, only
this module imports them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.control.scaling import REPLICA_STATES
from gateway.dataplane.policies import PeakEwma

if TYPE_CHECKING:
    from gateway.control.autoscaler import PoolAutoscaler
    from gateway.control.gpus import GpuLedger
    from gateway.dataplane.pool import Pool
    from gateway.dataplane.replica import Replica


STATES = REPLICA_STATES  # what a replica's ``state`` may be


@dataclass(frozen=True, slots=True)
class EngineView:
    """What the replica's engine last said of its load (engine signals), and how long ago."""

    running: float
    waiting: float
    kv_usage: float | None
    age_s: float


@dataclass(frozen=True, slots=True)
class ReplicaView:
    id: str
    url: str | None  # None while an autoscaled replica has no address yet
    state: str  # one of STATES; a static pool's replicas are "ready" or "draining"
    inflight: int = 0
    limit: int = 0  # its concurrency limit: learnt, or the fixed cap
    up: bool = False  # the active health verdict
    ejected: bool = False
    routable: bool = False  # up and not ejected: the pool sends it requests
    estimate_s: float | None = None  # peak_ewma's latency estimate (None: another policy)
    gpus: tuple[str, ...] = ()
    engine: EngineView | None = None  # None: not read (engine signals off, or none yet)


@dataclass(frozen=True, slots=True)
class AutoscaleView:
    min_replicas: int
    max_replicas: int
    desired: int | None  # the last decision (None before the first)
    panic: bool
    predicted_wait_p99_s: float | None  # Erlang C's p99 wait at the ready capacity (inf:
    # saturated); None until a service time is measured
    states: tuple[tuple[str, int], ...]  # how many replicas it manages, by state
    members: tuple[ReplicaView, ...]  # every replica it manages, routable yet or not


@dataclass(frozen=True, slots=True)
class PoolView:
    name: str
    policy: str
    inflight: int
    queued: int
    hedge_delay_s: float | None  # None while unknown or off
    wait_p99_s: float | None  # the p99 of recent waits for a slot, 0 for none; None: too few
    replicas: tuple[ReplicaView, ...]  # those the pool routes among
    autoscale: AutoscaleView | None  # None: a static pool


@dataclass(frozen=True, slots=True)
class GatewayView:
    pools: tuple[PoolView, ...]
    gpus_total: int
    gpus_free: int


class Viewable(Protocol):
    def view(self) -> GatewayView:
        """A snapshot of now; called on the event loop."""
        ...


def snapshot(
    pools: Mapping[str, Pool], autoscalers: Mapping[str, PoolAutoscaler], ledger: GpuLedger
) -> GatewayView:
    """The view of the live objects; on the event loop, in one pass."""
    return GatewayView(
        tuple(_pool(pool, autoscalers.get(name), ledger) for name, pool in pools.items()),
        ledger.total,
        len(ledger.free),
    )


def _pool(pool: Pool, scaler: PoolAutoscaler | None, ledger: GpuLedger) -> PoolView:
    now = pool.clock()
    policy = pool.policy if isinstance(pool.policy, PeakEwma) else None

    def replica(r: Replica, state: str, gpus: tuple[str, ...] = ()) -> ReplicaView:
        e = r.engine
        engine = None if e is None else EngineView(e.running, e.waiting, e.kv_usage, now - e.at)
        return ReplicaView(
            r.id, r.url, state, r.inflight, r.cap, r.health.up, r.health.ejected(now),
            r.health.routable(now), policy.estimate(r) if policy else None, gpus, engine,
        )  # fmt: skip

    replicas = tuple(
        replica(r, "draining" if r.draining else "ready") for r in pool.replicas.values()
    )
    autoscale = None
    if scaler is not None:
        members = []
        for m in scaler.members.values():
            gpus = tuple(ledger.allocated.get(m.replica_id, ()))
            if m.replica is not None:
                members.append(replica(m.replica, m.state, gpus))
            else:
                url = m.instance.url if m.instance else None
                members.append(ReplicaView(m.replica_id, url, m.state, gpus=gpus))
        decision = scaler.decision
        autoscale = AutoscaleView(
            scaler.settings.min_replicas,
            scaler.settings.max_replicas,
            decision.desired if decision else None,
            bool(decision and decision.panic),
            scaler.predicted_wait_p99_s,
            tuple(scaler.count.items()),
            tuple(members),
        )
    return PoolView(
        pool.name, pool.settings.policy, pool.inflight, pool.queued, pool.hedge_after(),
        pool.waits.quantile(99.0), replicas, autoscale,
    )  # fmt: skip
