"""A replica as the reconcile loop tracks it (``Member``), from its start to its removal."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.control.drivers import Instance
from gateway.control.scaling import ReplicaState, ReplicaView
from gateway.dataplane.replica import Replica

STABLE_S = 60.0  # ready this long, a replica's start counts as good: the backoff resets


@dataclass(eq=False)
class Member:
    replica_id: str
    state: ReplicaState
    since: float  # when it was started (or adopted)
    instance: Instance | None = None  # None while the driver's start is in flight
    replica: Replica | None = None  # the data plane's view, from ready on
    busy: bool = False  # a drain or removal task owns it
    stop_failures: int = 0  # failed removals in a row
    retry_at: float = 0.0  # a failed removal is not tried again before then
    ready_at: float | None = None  # when it passed its health check
    expected_s: float = 0.0  # how long its start (or wake) is expected to take
    tier_since: float = 0.0  # when it entered its warm tier (paused, stopped)

    def view(self, now: float) -> ReplicaView:
        """What ``scaling.plan`` weighs of it."""
        inflight = self.replica.inflight if self.replica else 0
        return ReplicaView(self.replica_id, self.state, inflight, now - self.since)

    def crashed_early(self, now: float) -> bool | None:
        """Was it ready for less than ``STABLE_S``? (None: it never was.) A replica that
        passes its health check and dies soon after is a failed start too, or an image
        that crashes under its first requests would be restarted every tick, as
        Kubernetes' CrashLoopBackOff also counts."""
        if self.ready_at is None:
            return None
        return now - self.ready_at < STABLE_S
