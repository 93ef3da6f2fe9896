"""The autoscaler's decisions: pure functions of a demand history, the clock and replicas.

Nothing here does I/O or reads a clock: time comes in as ``now`` arguments (seconds on any
monotonic scale), so every rule is a table test with plain floats. The reconcile loop
records one sample per tick (the pool's offered concurrency, ``demand.py``), asks
``Scaler.decide`` for the desired replica count, and turns the difference into actions
with ``plan``.

The model is Knative's KPA (stable and panic windows, no scale-down while panicking, a
scale-down delay), with four fixes: the demand is the offered load (arrival rate x
service time), not in-flight + queued, so the backlog that queues while replicas start
is not taken for demand (Knative 4344, 13284); the backlog is a term of its own, asked
for at the moment, never averaged, and worth one replica at most;
replicas that are still starting count as capacity; a gateway that just restarted never
scales down on a history too short to trust; and averages are weighted by time, so extra
ticks (on-demand wake-ups) or late ones do not skew them. ``docs/autoscaling.md`` gives
the reasoning and the figures.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from gateway.control.sizing import replicas_for_wait
from gateway.control.tiers import ORDER as TIER_ORDER

if TYPE_CHECKING:
    from gateway.config import Autoscale

EPS = 1e-9  # float noise: 3.3000000000000003 / 1.1 must ask for 3 replicas, not 4

Reason = Literal[
    "steady",
    "scale_up",
    "panic",
    "scale_down",
    "delay",
    "min",
    "max",
    "warming",
    "from_zero",
    "to_zero",
    "keep_alive",
]
ReplicaState = Literal["starting", "ready", "draining", "failed", "paused", "asleep", "stopped"]
# (paused, asleep, stopped: held in a warm tier, ``tiers.py``; nothing until woken)
REPLICA_STATES: tuple[ReplicaState, ...] = get_args(ReplicaState)


def _reason(
    desired: int, unclamped: int, held: int, raw: int, capacity: int, panic: bool, from_zero: bool
) -> Reason:
    """Why the decision is what it is: the first rule that shaped it."""
    if from_zero and desired > 0:
        return "from_zero"
    if desired != unclamped:
        return "max" if desired < unclamped else "min"
    if panic:
        return "panic"
    if desired > capacity:
        return "scale_up"
    if desired < capacity:
        return "to_zero" if desired == 0 else "scale_down"
    if raw < capacity:  # held at capacity: by a short history, or by the delay
        return "warming" if held < capacity else "delay"
    return "steady"


def replicas_for(concurrency: float, target: float) -> int:
    """ceil(concurrency / target), never negative, immune to float noise."""
    return max(0, math.ceil(concurrency / target - EPS))


@dataclass(frozen=True, slots=True)
class ScalingRules:
    """The knobs of one pool; invariants checked on construction (``config`` checks them too)."""

    min_replicas: int
    max_replicas: int
    target_concurrency: float  # offered concurrency per replica (``demand.py``)
    stable_window_s: float
    panic_window_s: float
    panic_threshold: float  # panic when the panic window asks for >= this x capacity
    scale_down_delay_s: float
    queue_wait_p99_s: float | None = None  # the SLO (``sizing.py``); None: none

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if not self.target_concurrency > 0:
            raise ValueError("target_concurrency must be > 0")
        if not 0 < self.panic_window_s <= self.stable_window_s:
            raise ValueError("need 0 < panic_window_s <= stable_window_s")
        if not self.panic_threshold >= 1 or not self.scale_down_delay_s >= 0:
            raise ValueError("need panic_threshold >= 1 and scale_down_delay_s >= 0")
        if self.queue_wait_p99_s is not None and not self.queue_wait_p99_s > 0:
            raise ValueError("queue_wait_p99_s must be > 0")

    @classmethod
    def from_config(cls, a: Autoscale) -> ScalingRules:
        return cls(
            min_replicas=a.min_replicas,
            max_replicas=a.max_replicas,
            target_concurrency=a.target_concurrency,
            stable_window_s=a.stable_window_s,
            panic_window_s=a.panic_window_s,
            panic_threshold=a.panic_threshold,
            scale_down_delay_s=a.scale_down_delay_s,
            queue_wait_p99_s=None if a.slo is None else a.slo.queue_wait_p99_s,
        )


@dataclass(frozen=True, slots=True)
class Servers:
    """What SLO sizing needs to know of the replicas, as measured."""

    service_s: float  # the time a request holds a slot
    slots: int  # slots per replica, >= 1


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int  # total replicas wanted (ready + starting), within [min, max]
    panic: bool
    reason: Reason  # why ``desired`` is what it is; a bounded label for metrics and logs
    stable_concurrency: float  # time-weighted average over the stable window
    panic_concurrency: float  # ... and over the panic window
    slo_replicas: int = 0  # what the queue-wait SLO alone asks for (0: no SLO, or unknown)


class Scaler:
    """Holds the demand history of one pool and the panic state.

    Invariants of ``decide`` (``capacity`` = ready + starting):
    - ``min_replicas <= desired <= max_replicas``, always; the clamp wins over everything.
    - The ask is ``ceil((demand + backlog) / target)``, the demand being the higher of
      the two windows' averages: up within a panic window, down only as the stable one
      falls. The backlog adds at most one replica to what the demand alone asks: a
      backlog is transient, and one replica more drains it at that replica's rate. It
      keeps replicas in place for the queue as it is, but starts one only for what
      will still be queued when that replica would be ready (the start-up credit:
      replicas starting count as capacity from their expected ready times).
    - With a queue-wait SLO and the ``servers`` measured, the demand asks for at least
      the fewest replicas whose Erlang C p99 wait meets it (``sizing.py``).
    - While panicking, ``desired`` never drops: not below capacity, nor below any value
      recommended since the panic began. A panic ends a stable window after its
      condition (the panic window's demand at least ``panic_threshold`` x capacity)
      last held.
    - Outside panic, ``desired`` is the highest recommendation of the last
      ``scale_down_delay_s``: a lower demand must last that long before replicas go.
    - Until ``max(stable_window_s, scale_down_delay_s)`` has passed since ``now`` at
      construction (or while no sample lies in the stable window), ``desired >= capacity``:
      after a restart that adopted running replicas, a near-empty history is no evidence
      for scaling down. Scaling up is never held back.
    - A waiting request asks for one replica at least; at capacity 0, any demand asks
      for one at once ("from_zero"). Scaling to zero needs a stable average of exactly 0,
      and nothing waiting, for ``scale_down_delay_s``; or, in a quiet spell of a pool
      whose keep-alive is learnt (``keep``), that word alone decides the last replica:
      kept (or started ahead of the calls expected) inside its window, gone outside it.
      It never touches more than the last replica, nor a pool with requests waiting.

    ``rules`` may be replaced at any time (config reload); the history is kept.
    """

    __slots__ = ("_origin", "_panic_high", "_panic_seen", "_recs", "_samples", "_start", "rules")

    def __init__(self, rules: ScalingRules, now: float) -> None:
        self.rules = rules
        self._start = now  # when the history starts; before it, nothing is known
        self._origin = now  # the time just before the oldest kept sample
        self._samples: deque[tuple[float, float]] = deque()  # (time, demand)
        self._recs: deque[tuple[float, int]] = deque()  # (time, unclamped recommendation)
        self._panic_seen: float | None = None  # last time the panic condition held
        self._panic_high = 0  # the highest recommendation since the panic began

    @property
    def panicking(self) -> bool:
        return self._panic_seen is not None

    def record(self, now: float, demand: float) -> None:
        """Add one sample: the pool's offered concurrency at ``now``.

        A sample stands for the interval since the previous one (the first: since the
        start), so the average is weighted by time. Times must not go backwards.
        """
        if not demand >= 0:  # also refuses NaN
            raise ValueError(f"demand must be >= 0, not {demand}")
        if self._samples and now < self._samples[-1][0]:
            raise ValueError("sample times must not go backwards")
        self._samples.append((now, demand))
        self._prune(now)

    def _prune(self, now: float) -> None:
        horizon = now - self.rules.stable_window_s
        while self._samples and self._samples[0][0] <= horizon:
            self._origin = self._samples.popleft()[0]
        horizon = now - self.rules.scale_down_delay_s
        while self._recs and self._recs[0][0] <= horizon:
            self._recs.popleft()

    def average(self, now: float, window_s: float) -> float:
        """Time-weighted mean demand over ``(now - window_s, now]``; 0 with no data."""
        low = now - window_s
        total = weight = 0.0
        prev = self._origin
        for t, c in self._samples:
            span = min(t, now) - max(prev, low)
            if span > 0:
                total += span * c
                weight += span
            prev = t
        if weight > 0:
            return total / weight
        recent = [c for t, c in self._samples if low < t <= now]  # samples with no span yet
        return sum(recent) / len(recent) if recent else 0.0

    def decide(
        self,
        now: float,
        ready: int,
        starting: int,
        backlog: float = 0.0,
        waiting: int = 0,
        servers: Servers | None = None,
        backlog_at_ready: float | None = None,
        keep: bool | None = None,
    ) -> Decision:
        """The replicas the pool should have (ready + starting), once per tick.
        ``backlog``: the concurrency that would serve the requests queued now in time
        (``demand.OfferedLoad.backlog_concurrency``), and ``backlog_at_ready`` what is
        left of it when a replica started now would be ready (``demand.backlog_left``;
        None: as much); ``waiting``: how many there are; ``servers``: the service time
        and slots, for the SLO (None: not known yet); ``keep``: the keep-alive's word on
        the last replica of a pool quiet now (``keepalive.py``: True keep or pre-warm
        one, False let it go; None: no word)."""
        if ready < 0 or starting < 0 or not backlog >= 0 or waiting < 0:
            raise ValueError("replica counts, backlog and waiting must be >= 0")
        r = self.rules
        self._prune(now)
        capacity = ready + starting
        stable = self.average(now, r.stable_window_s)
        panic_avg = self.average(now, r.panic_window_s)
        self._panic_condition(now, capacity, panic_avg)
        panic = self._panic_seen is not None
        demand = max(stable, panic_avg)  # up on the short window, down on the long one
        slo = 0
        if r.queue_wait_p99_s is not None and servers is not None:
            slo = replicas_for_wait(
                demand, servers.service_s, servers.slots, r.queue_wait_p99_s, r.max_replicas
            )
        needed = max(replicas_for(demand, r.target_concurrency), slo)
        drain = min(replicas_for(demand + backlog, r.target_concurrency), needed + 1)
        grow = drain
        if backlog_at_ready is not None:
            grow = min(replicas_for(demand + backlog_at_ready, r.target_concurrency), needed + 1)
        raw = max(needed, min(drain, capacity), grow)  # the backlog keeps what is there,
        # and starts more only for what will still be queued when they are ready
        if panic:
            raw = self._panic_high = max(raw, self._panic_high, capacity)
        asked = stable > 0 or waiting > 0 or bool(self._samples and self._samples[-1][1] > 0)
        from_zero = capacity == 0 and asked
        if waiting or from_zero:  # a waiting request asks for a replica, whatever it costs
            raw = max(raw, 1)
        held, unclamped = self._delay_and_warm_up(now, raw, capacity)
        desired = min(max(unclamped, r.min_replicas), r.max_replicas)
        reason = _reason(desired, unclamped, held, raw, capacity, panic, from_zero)
        if keep is not None and r.min_replicas == 0 and not waiting and desired <= 1:
            desired, reason = (1, "keep_alive") if keep else (0, "to_zero")
        return Decision(desired, panic, reason, stable, panic_avg, slo)

    def _panic_condition(self, now: float, capacity: int, panic_avg: float) -> None:
        """Enter, keep or leave panic. Panic compares the exact (unrounded) ask with the
        capacity, starting replicas included, and ends a stable window after the
        condition last held: the surge is in the stable average then."""
        r = self.rules
        over = panic_avg / r.target_concurrency >= r.panic_threshold * capacity - EPS
        if capacity >= 1 and over:
            if self._panic_seen is None:
                self._panic_high = 0
            self._panic_seen = now
        elif self._panic_seen is not None and now - self._panic_seen >= r.stable_window_s:
            self._panic_seen = None

    def _delay_and_warm_up(self, now: float, raw: int, capacity: int) -> tuple[int, int]:
        """(the highest recommendation over the scale-down delay, that or the capacity
        while the history is too short to scale down on: the warm-up)."""
        r = self.rules
        self._recs.append((now, raw))
        held = max(rec for _, rec in self._recs)
        warm_for = max(r.stable_window_s, r.scale_down_delay_s)
        in_window = any(t > now - r.stable_window_s for t, _ in self._samples)
        warming = now - self._start < warm_for or not in_window
        return held, max(held, capacity) if warming else held


@dataclass(frozen=True, slots=True)
class ReplicaView:
    replica_id: str
    state: ReplicaState
    inflight: int
    age_s: float  # since it was started (or adopted)


@dataclass(frozen=True, slots=True)
class Plan:
    start: int  # how many new replicas to start
    drain: tuple[str, ...]  # replica ids to drain then stop (scale-down)
    remove: tuple[str, ...]  # failed replicas to remove now (they are replaced by ``start``)
    wake: tuple[str, ...] = ()  # held replicas to wake, in place of as many starts

    @property
    def converged(self) -> bool:
        """Nothing to do (the loop must then make no driver call at all)."""
        return self.start == 0 and not self.drain and not self.remove and not self.wake


def plan(desired: int, replicas: Sequence[ReplicaView]) -> Plan:
    """The actions that move ``replicas`` toward ``desired`` live (ready + starting) ones.

    - Failed replicas are removed and, not being live, replaced through ``start``.
    - Draining replicas are on their way out: they count for nothing and are left alone.
    - Only READY replicas are drained, and never so many that fewer than ``desired`` ready
      ones remain: a starting replica is not stopped (it may be nearly up), and a ready one
      is not traded for a promise (a start can still fail). Surplus starting replicas are
      drained on a later tick, once ready; until then the plan may converge with
      live > desired.
    - Among ready ones, the fewest in-flight requests go first (the shortest drain), then
      the youngest (the least warmed-up caches), then by id (deterministic).
    - Replicas held in a warm tier (``tiers.py``) are not live; what is to be started is
      woken from them first, the warmest tier first (paused, then stopped), and only the
      rest is created.
    """
    if desired < 0:
        raise ValueError("desired must be >= 0")
    remove = tuple(v.replica_id for v in replicas if v.state == "failed")
    ready = [v for v in replicas if v.state == "ready"]
    live = len(ready) + sum(v.state == "starting" for v in replicas)
    start = max(0, desired - live)
    held = sorted(
        (v for v in replicas if v.state in TIER_ORDER),
        key=lambda v: (TIER_ORDER.index(v.state), v.replica_id),
    )
    wake = tuple(v.replica_id for v in held[:start])
    surplus = min(live - desired, len(ready) - desired)
    order = sorted(ready, key=lambda v: (v.inflight, v.age_s, v.replica_id))
    drain = tuple(v.replica_id for v in order[: max(0, surplus)])
    return Plan(start - len(wake), drain, remove, wake)
