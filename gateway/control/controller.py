"""One pool's scaling decision per tick, from what the reconcile loop observed: pure.

The reconcile loop (``autoscaler.py``) does the I/O: it lists replicas, reads the pool
and acts. Everything between the observation and the decision is here, so the loop and
the trace benchmark (``load/bench/trace.py``, which runs it over simulated pools) share
one controller: the offered load and its service time (``demand.py``), the backlog and
its start-up credit, the SLO's servers (``sizing.py``), the keep-alive's word on the
last replica (``keepalive.py``) and the windows of ``scaling.Scaler``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import Autoscale
from gateway.control.demand import OfferedLoad, backlog_left
from gateway.control.keepalive import KeepAlive, keep_alive
from gateway.control.scaling import Decision, Scaler, ScalingRules, Servers
from gateway.control.sizing import wait_quantile_s
from gateway.dataplane.pool import Tally


@dataclass(frozen=True, slots=True)
class Observation:
    """What the loop saw of its pool at one tick."""

    tally: Tally  # the pool's running totals
    service_s: float | None  # the pool's service time (None: no answer yet)
    working: int  # requests on the replicas
    queued: int  # requests waiting for a slot
    cold: bool  # no live replica: requests wait for one to start
    quiet_since: float | None  # since when nothing was worked on nor queued (None: busy)
    gaps: Sequence[float]  # the pool's recent quiet spells
    ready: int
    starting: Sequence[float]  # each starting replica's time until its expected readiness
    slots: Sequence[float]  # the learnt slots of each live replica
    revive_s: float  # how soon a replica asked for now would be ready: the wake of the
    # warmest one held in a tier, or else the expected start-up time


class Controller:
    """Decides one pool's replicas from one ``Observation`` a tick.

    ``predicted_wait_p99_s`` is Erlang C's p99 wait at the ready capacity (None until a
    service time is known); ``keep_alive`` the windows last learnt (None: not yet)."""

    def __init__(self, settings: Autoscale, tally: Tally, now: float) -> None:
        self.scaler = Scaler(ScalingRules.from_config(settings), now)
        self.load = OfferedLoad(tally, now)
        self.apply(settings)
        self._slots = max(1, round(settings.target_concurrency))  # per replica, as last seen
        self.predicted_wait_p99_s: float | None = None
        self.keep_alive: KeepAlive | None = None

    def apply(self, settings: Autoscale) -> None:
        """New settings (a reload); the history is kept."""
        self.settings = settings
        self.scaler.rules = ScalingRules.from_config(settings)

    def decide(self, now: float, seen: Observation) -> Decision:
        offered = self.load.update(seen.tally, now, seen.service_s)
        # until an answer gave a service time, what the replicas hold stands for demand
        self.scaler.record(now, seen.working if offered is None else offered)
        servers = self._servers(seen)
        backlog, at_ready = self._backlog(now, seen, servers)
        # on a cold pool, requests refused for their deadline wait for nothing, yet ask
        waiting = seen.queued or int(seen.cold and self.load.rate > 0)
        decision = self.scaler.decide(
            now, seen.ready, len(seen.starting), backlog, waiting, servers, at_ready,
            self._keep(now, seen),
        )  # fmt: skip
        self.predicted_wait_p99_s = None if servers is None else wait_quantile_s(
            seen.ready * servers.slots, decision.panic_concurrency, servers.service_s
        )  # fmt: skip
        return decision

    def _backlog(
        self, now: float, seen: Observation, servers: Servers | None
    ) -> tuple[float, float]:
        """The concurrency that would serve, within the horizon, the queue as it is, and
        what is left of it when a replica started now would be ready (the start-up
        credit: ``demand.backlog_left``)."""
        if servers is None or not seen.queued:
            return 0.0, 0.0
        expected, slots = seen.revive_s, float(servers.slots)
        demand = self.scaler.average(now, self.settings.panic_window_s)
        left = backlog_left(
            seen.queued, demand, servers.service_s, seen.ready * slots,
            [(eta, slots) for eta in seen.starting], expected,
        )  # fmt: skip
        horizon_s = max(self.settings.panic_window_s, expected)
        return (
            self.load.backlog_concurrency(seen.queued, horizon_s),
            self.load.backlog_concurrency(left, horizon_s),
        )

    def _keep(self, now: float, seen: Observation) -> bool | None:
        """The keep-alive's word on the last replica (``keepalive.py``): only for a pool
        that may scale to zero, in a quiet spell, once its spells are learnt (or at
        once, with a fixed ``keep_alive_s``)."""
        if seen.quiet_since is None or self.settings.min_replicas:
            return None
        fixed_s = self.settings.keep_alive_s
        self.keep_alive = window = (
            KeepAlive(0.0, fixed_s) if fixed_s is not None else keep_alive(
                seen.gaps, seen.revive_s, self.settings.keep_alive_percentile,
                self.settings.tick_s,
            )
        )  # fmt: skip
        return None if window is None else window.warm(now - seen.quiet_since)

    def _servers(self, seen: Observation) -> Servers | None:
        """The service time and the slots per replica (the mean of the learnt ones),
        for SLO sizing; None until a service time is measured."""
        if seen.slots:
            self._slots = max(1, round(sum(seen.slots) / len(seen.slots)))
        return None if seen.service_s is None else Servers(seen.service_s, self._slots)
