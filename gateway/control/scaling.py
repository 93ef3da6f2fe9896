"""The autoscaler's decisions: pure functions of a concurrency history, the clock and replicas.

Nothing here does I/O or reads a clock: time comes in as ``now`` arguments (seconds on any
monotonic scale), so every rule is a table test with plain floats. The reconcile loop
records one sample per tick, asks ``Scaler.decide`` for the desired replica count, and
turns the difference into actions with ``plan``.

The model is Knative's KPA (stable and panic windows, no scale-down while panicking, a
scale-down delay), with three fixes: replicas that are still starting count as capacity
(a slow start must not look like missing capacity, Knative 13284), a gateway that just
restarted never scales down on a history too short to trust, and averages are weighted by
time, so extra ticks (on-demand wake-ups) or late ones do not skew them.

A fourth fix is for the backlog a panic leaves behind, which Knative counts as demand
(so a step that needs 3 replicas asks for the maximum): a panic steps past its first step
only on a whole panic window of evidence that the capacity in place is short, by at most
``panic_threshold`` x, and it settles once its queue has drained with everything it asked
for ready, the in-flight average standing in for demand (Little's law). The reasoning,
rule by rule: ``docs/autoscaling.md``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

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
]
ReplicaState = Literal["starting", "ready", "draining", "failed"]
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
    target_concurrency: float  # in-flight + queued requests per replica
    stable_window_s: float
    panic_window_s: float
    panic_threshold: float  # panic when the panic window asks for >= this x capacity
    scale_down_delay_s: float

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if not self.target_concurrency > 0:
            raise ValueError("target_concurrency must be > 0")
        if not 0 < self.panic_window_s <= self.stable_window_s:
            raise ValueError("need 0 < panic_window_s <= stable_window_s")
        if not self.panic_threshold >= 1 or not self.scale_down_delay_s >= 0:
            raise ValueError("need panic_threshold >= 1 and scale_down_delay_s >= 0")

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
        )


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int  # total replicas wanted (ready + starting), within [min, max]
    panic: bool
    reason: Reason  # why ``desired`` is what it is; a bounded label for metrics and logs
    stable_concurrency: float  # time-weighted average over the stable window
    panic_concurrency: float  # ... and over the panic window


class Scaler:
    """Holds the concurrency history of one pool and the panic state.

    Invariants of ``decide`` (``capacity`` = ready + starting):
    - ``min_replicas <= desired <= max_replicas``, always; the clamp wins over everything.
    - While panicking, ``desired`` never drops: not below capacity, nor below any value
      recommended since the panic began. A panic ends a stable window after its condition
      last held, or when it settles (its queue drained, module docstring rule 3); until it
      would have ended, the stable ask is then at least the ask since it settled.
    - After its first step, a panic steps up only on a panic window of fresh evidence
      that the capacity is short (rule 2), or once a stable window passed without one,
      and then by at most ``panic_threshold`` x capacity.
    - Outside panic, ``desired`` is the highest recommendation of the last
      ``scale_down_delay_s``: a lower demand must last that long before replicas go.
    - Until ``max(stable_window_s, scale_down_delay_s)`` has passed since ``now`` at
      construction (or while no sample lies in the stable window), ``desired >= capacity``:
      after a restart that adopted running replicas, a near-empty history is no evidence
      for scaling down. Scaling up is never held back.
    - At capacity 0, any demand asks for at least one replica at once ("from_zero");
      scaling to zero needs a stable average of exactly 0 for ``scale_down_delay_s``.

    ``rules`` may be replaced at any time (config reload); the history is kept.
    """

    __slots__ = (
        "_full_since",
        "_guard_until",
        "_last_starting",
        "_origin",
        "_panic_began",
        "_panic_high",
        "_panic_seen",
        "_recs",
        "_samples",
        "_settled",
        "_start",
        "_stepped",
        "rules",
    )

    def __init__(self, rules: ScalingRules, now: float) -> None:
        self.rules = rules
        self._start = now  # when the history starts; before it, nothing is known
        self._origin = now  # the time just before the oldest kept sample
        self._samples: deque[tuple[float, float, float]] = deque()  # (time, concurrency, queued)
        self._recs: deque[tuple[float, int]] = deque()  # (time, unclamped recommendation)
        self._panic_seen: float | None = None  # last time the panic condition held
        self._panic_began = now  # when the current (or last) panic began
        self._panic_high = 0  # the highest recommendation since the panic began
        self._guard_until = -math.inf  # a settled panic's floor lasts until then
        self._settled = now  # when the last panic settled
        self._stepped = now  # when a panic last raised its recommendation
        self._last_starting = 0  # replicas starting at the previous decision
        self._full_since: float | None = now  # first decision since one with any starting

    @property
    def panicking(self) -> bool:
        return self._panic_seen is not None

    def record(self, now: float, concurrency: float, queued: float = 0.0) -> None:
        """Add one sample: in-flight + queued requests of the pool at ``now``, and how many
        of them were queued (waiting for a slot) rather than in flight.

        A sample stands for the interval since the previous one (the first: since the
        start), so the average is weighted by time. Times must not go backwards.
        """
        if not concurrency >= 0:  # also refuses NaN
            raise ValueError(f"concurrency must be >= 0, not {concurrency}")
        if not 0 <= queued <= concurrency:
            raise ValueError(f"queued must be within [0, concurrency], not {queued}")
        if self._samples and now < self._samples[-1][0]:
            raise ValueError("sample times must not go backwards")
        self._samples.append((now, concurrency, queued))
        self._prune(now)

    def _prune(self, now: float) -> None:
        horizon = now - self.rules.stable_window_s
        while self._samples and self._samples[0][0] <= horizon:
            self._origin = self._samples.popleft()[0]
        horizon = now - self.rules.scale_down_delay_s
        while self._recs and self._recs[0][0] <= horizon:
            self._recs.popleft()

    def average(self, now: float, window_s: float) -> float:
        """Time-weighted mean concurrency over ``(now - window_s, now]``; 0 with no data."""
        low = now - window_s
        total = weight = 0.0
        prev = self._origin
        for t, c, _ in self._samples:
            span = min(t, now) - max(prev, low)
            if span > 0:
                total += span * c
                weight += span
            prev = t
        if weight > 0:
            return total / weight
        recent = [c for t, c, _ in self._samples if low < t <= now]  # samples with no span yet
        return sum(recent) / len(recent) if recent else 0.0

    def decide(self, now: float, ready: int, starting: int) -> Decision:
        """The replicas the pool should have (ready + starting), once per tick: the
        recommendation of the window in force (stable, panic, or a settled panic's
        guard), then the scale-down delay, the warm-up hold and the bounds."""
        if ready < 0 or starting < 0:
            raise ValueError("replica counts must be >= 0")
        r = self.rules
        self._prune(now)
        capacity = ready + starting
        pending = self._note_starting(now, starting)
        if self._panic_seen is not None and not pending:
            self._settle(now, capacity)
        stable = self.average(now, r.stable_window_s)
        panic_avg = self.average(now, r.panic_window_s)
        want_stable = replicas_for(stable, r.target_concurrency)
        want_panic = replicas_for(panic_avg, r.target_concurrency)
        began = self._panic_condition(now, capacity, panic_avg)
        panic = self._panic_seen is not None
        if panic:
            raw = self._panic_step(now, capacity, max(want_stable, want_panic), began)
        elif now < self._guard_until:
            raw = max(want_stable, self._guard_floor(now, capacity))
        else:
            raw = want_stable
        demand = stable > 0 or bool(self._samples and self._samples[-1][1] > 0)
        from_zero = capacity == 0 and demand
        if from_zero:
            raw = max(raw, want_panic, 1)  # never wait for a window to fill
        held, unclamped = self._delay_and_warm_up(now, raw, capacity)
        desired = min(max(unclamped, r.min_replicas), r.max_replicas)
        reason = _reason(desired, unclamped, held, raw, capacity, panic, from_zero)
        return Decision(desired, panic, reason, stable, panic_avg)

    def _note_starting(self, now: float, starting: int) -> bool:
        """Track replicas starting; True if the latest sample was (partly) taken short of
        the capacity asked for: replicas were starting at either end of it."""
        pending = starting > 0 or self._last_starting > 0
        self._last_starting = starting
        if starting > 0:
            self._full_since = None
        elif self._full_since is None:
            self._full_since = now
        return pending

    def _panic_condition(self, now: float, capacity: int, panic_avg: float) -> bool:
        """Enter, keep or leave panic; True when one begins now. Panic compares the exact
        (unrounded) ask with the capacity, starting replicas included, and ends a stable
        window after the condition last held: the surge is in the stable average then."""
        r = self.rules
        over = panic_avg / r.target_concurrency >= r.panic_threshold * capacity - EPS
        if capacity >= 1 and over:
            began = self._panic_seen is None
            if began:
                self._panic_high, self._panic_began = 0, now
            self._panic_seen = now
            return began
        if self._panic_seen is not None and now - self._panic_seen >= r.stable_window_s:
            self._panic_seen = None
        return False

    def _panic_step(self, now: float, capacity: int, ask: int, began: bool) -> int:
        """In panic the recommendation only rises (never under the capacity in place); a
        step after the first needs fresh evidence that capacity is short, and goes at
        most to ``panic_threshold`` x the capacity (rule 2)."""
        r = self.rules
        if not began:
            if not self._short(now) and now - self._stepped < r.stable_window_s:
                ask = 0
            ask = min(ask, replicas_for(r.panic_threshold * capacity, 1))
        raw = max(ask, self._panic_high, capacity)
        if raw > self._panic_high:
            self._stepped = now
        self._panic_high = raw
        return raw

    def _guard_floor(self, now: float, capacity: int) -> int:
        """After a settled panic (rule 3) the stable window still holds the backlog: hold
        the capacity until a sample comes after it, then follow the samples since."""
        if any(t > self._settled for t, _, _ in self._samples):
            return replicas_for(
                self.average(now, now - self._settled), self.rules.target_concurrency
            )
        return capacity

    def _delay_and_warm_up(self, now: float, raw: int, capacity: int) -> tuple[int, int]:
        """(the highest recommendation over the scale-down delay, that or the capacity
        while the history is too short to scale down on: the warm-up)."""
        r = self.rules
        self._recs.append((now, raw))
        held = max(rec for _, rec in self._recs)
        warm_for = max(r.stable_window_s, r.scale_down_delay_s)
        in_window = any(t > now - r.stable_window_s for t, _, _ in self._samples)
        warming = now - self._start < warm_for or not in_window
        return held, max(held, capacity) if warming else held

    def _short(self, now: float) -> bool:
        """Is there fresh evidence that the capacity in place is short (rule 2)? A whole
        panic window sampled with no replica starting, over which concurrency did not
        fall (if it did, requests left faster than they arrived: a backlog drains)."""
        low = now - self.rules.panic_window_s
        if self._full_since is None or self._full_since > low:
            return False
        window = [c for t, c, _ in self._samples if t > low]
        return bool(window) and window[-1] >= window[0]

    def _settle(self, now: float, capacity: int) -> None:
        """End a panic whose queue has drained, and take the backlog out of the history
        (rule 3). The caller checks that no replica is starting; here the capacity must
        be all the panic asked for (a lost replica leaves it unproven), the latest sample
        must have nothing queued, and something must have queued since one panic window
        before the panic began."""
        r = self.rules
        if not self._samples or self._samples[-1][2] > 0:
            return  # still queueing: a backlog still draining, or demand beyond capacity
        if capacity < min(self._panic_high, r.max_replicas):
            return  # a replica was lost, or some never came: the capacity is unproven
        since = self._panic_began - r.panic_window_s
        samples = list(self._samples)
        first = next((i for i, (t, _, q) in enumerate(samples) if t > since and q > 0), None)
        if first is None:
            return  # nothing ever queued: a genuine surge; the panic holds as usual
        while first and samples[first - 1][2] > 0:
            first -= 1  # back to where the queue formed
        prev = samples[first - 1][0] if first else self._origin
        total = weight = 0.0
        for t, c, q in samples[first:]:
            total += (t - prev) * (c - q)
            weight += t - prev
            prev = t
        level = total / weight if weight > 0 else samples[-1][1]
        self._samples = deque(samples[:first] + [(t, level, 0.0) for t, _, _ in samples[first:]])
        assert self._panic_seen is not None
        self._guard_until = self._panic_seen + r.stable_window_s
        self._settled = now
        self._panic_seen = None


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

    @property
    def converged(self) -> bool:
        """Nothing to do (the loop must then make no driver call at all)."""
        return self.start == 0 and not self.drain and not self.remove


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
    """
    if desired < 0:
        raise ValueError("desired must be >= 0")
    remove = tuple(v.replica_id for v in replicas if v.state == "failed")
    ready = [v for v in replicas if v.state == "ready"]
    live = len(ready) + sum(v.state == "starting" for v in replicas)
    start = max(0, desired - live)
    surplus = min(live - desired, len(ready) - desired)
    order = sorted(ready, key=lambda v: (v.inflight, v.age_s, v.replica_id))
    drain = tuple(v.replica_id for v in order[: max(0, surplus)])
    return Plan(start, drain, remove)
