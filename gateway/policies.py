"""Routing policies: which eligible replica gets the next request.

The pool calls a policy on the event loop thread, for every attempt::

    r = policy.pick(candidates)          # eligible replicas only; None when there are none
    policy.on_start(r)                   # after the pool incremented r.inflight
    policy.on_end(r, latency_s, ok)      # after it decremented it; latency = time to first byte
    policy.forget(replica_id)            # the replica left the pool

Invariants every policy keeps:

* ``pick`` returns one of ``candidates`` (None only for an empty sequence) and never writes to
  a replica: the pool alone owns ``inflight`` and ``draining``.
* Routing state lives here, keyed by ``Replica.id``, created lazily (any replica may show up
  at any time) and dropped by ``forget``, so it never outlives the replica.
* The module is pure: time (``clock``, monotonic seconds) and randomness (``rng``) are
  injected, which keeps the logic deterministic under test. Ties are broken at random so
  that several gateways, or a burst of picks, do not all pile onto the first replica.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.replica import Replica

Clock = Callable[[], float]

FULL_SCAN_MAX = 16
"""peak_ewma scans every candidate up to this many (the few-replicas GPU case, where two
random choices often miss the one idle replica); above it, power of two choices."""

PENALTY_FACTOR = 2.0
"""A failure counts as at least this multiple of the replica's typical successful latency."""

TYPICAL_SAMPLES = 256
"""About how many recent successful samples, from any replica, the pool's typical latency
averages: what an unmeasured replica costs, and where an idle one's estimate relaxes to."""


class Policy(Protocol):
    def pick(self, candidates: Sequence[Replica]) -> Replica | None: ...
    def on_start(self, replica: Replica) -> None: ...
    def on_end(self, replica: Replica, latency_s: float, ok: bool) -> None: ...
    def forget(self, replica_id: str) -> None: ...


def _full_scan(
    candidates: Sequence[Replica], cost: Callable[[Replica], float], rng: random.Random
) -> Replica:
    """The cheapest candidate; uniform at random among equally cheap ones."""
    best, best_cost = [candidates[0]], cost(candidates[0])
    for r in candidates[1:]:
        c = cost(r)
        if c < best_cost:
            best, best_cost = [r], c
        elif c == best_cost:
            best.append(r)
    return best[0] if len(best) == 1 else rng.choice(best)


def _two_choices(
    candidates: Sequence[Replica], cost: Callable[[Replica], float], rng: random.Random
) -> Replica:
    """The cheaper of two distinct random candidates. ``sample`` returns them in random
    order, so keeping the first on a tie is a fair coin."""
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(candidates, 2)
    return b if cost(b) < cost(a) else a


def _inflight(replica: Replica) -> float:
    return replica.inflight


class _Stateless:
    """Shared constructor and no-op hooks for policies that only look at ``inflight``."""

    def __init__(self, *, clock: Clock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng

    def on_start(self, replica: Replica) -> None:
        pass

    def on_end(self, replica: Replica, latency_s: float, ok: bool) -> None:
        pass

    def forget(self, replica_id: str) -> None:
        pass


class RoundRobin(_Stateless):
    """Baseline only: a counter modulo the number of candidates. When the candidate list
    changes the cycle shifts but stays fair over time; it ignores load and latency."""

    def __init__(self, *, clock: Clock, rng: random.Random) -> None:
        super().__init__(clock=clock, rng=rng)
        self._next = 0

    def pick(self, candidates: Sequence[Replica]) -> Replica | None:
        if not candidates:
            return None
        replica = candidates[self._next % len(candidates)]
        self._next += 1
        return replica


class LeastConnections(_Stateless):
    """Fewest requests in flight, by a full scan: with few replicas and long requests (GPUs)
    a sampled choice misses the idle replica too often (Envoy added FULL_SCAN for this)."""

    def pick(self, candidates: Sequence[Replica]) -> Replica | None:
        return _full_scan(candidates, _inflight, self.rng) if candidates else None


class PowerOfTwoChoices(_Stateless):
    """Least connections over two random candidates: O(1), for large pools."""

    def pick(self, candidates: Sequence[Replica]) -> Replica | None:
        return _two_choices(candidates, _inflight, self.rng) if candidates else None


@dataclass(slots=True)
class _Ewma:
    value: float  # peak-EWMA of every sample, failure penalties included (s)
    stamp: float  # clock time of the last update of ``value``
    ok_value: float  # peak-EWMA of successful samples only: the base of the penalty
    ok_stamp: float


def _peak_ewma(old: float, stamp: float, sample: float, now: float, decay_s: float) -> float:
    """Finagle/Linkerd update: a higher sample is taken at once (peak sensitivity); a lower
    one is blended in with weight 1 - exp(-elapsed / decay_s), so the decay is per second,
    not per request, and does not depend on the request rate."""
    if sample > old:
        return sample
    w = math.exp(-max(now - stamp, 0.0) / decay_s)
    return old * w + sample * (1.0 - w)


class PeakEwma:
    """Response-time weighting: cost = latency estimate x (1 + inflight / slots), cheapest
    wins; ``slots`` is the pool's ``max_inflight_per_replica``.

    * Samples update a peak-EWMA (see ``_peak_ewma``). A replica without samples (new,
      or back after its health checks failed) is taken to be typical: it costs the pool's
      typical latency, an average over the last ``TYPICAL_SAMPLES`` or so successful
      samples from any replica (``default_rtt_s`` before the first), so it gets its share
      at once and is measured, rather than idling behind a fixed guess that may be slower
      than every replica in the pool. Its first sample replaces the guess outright (as in
      Finagle), since blending a measurement with a guess under a 10 s decay would leave
      it looking like the guess for tens of seconds.
    * A failure (``ok=False``: connect error, timeout, 5xx, 429) is recorded as the sample
      ``max(latency_s, penalty_s, PENALTY_FACTOR x the success-only EWMA)``, so a replica
      answering instant 500s looks slow, not fast (Linkerd 11669). The penalty is based on
      the success-only EWMA so a burst of failures does not compound it without bound.
    * At pick time (and only then; stored state is untouched) the estimate is relaxed toward
      the pool's typical latency with the same time constant, by the time since the last
      sample: a replica that was slow or failing once, and therefore gets no traffic,
      becomes as attractive as a typical one after a while and is re-measured, instead of
      being shunned for as long as the others answer faster than a fixed default.
    * The in-flight factor keeps a new or fast replica from being flooded: each request it
      takes raises its cost, so load spreads in proportion to 1 / latency. With one slot it
      is Finagle's ``(inflight + 1)``. A model server with several slots answers them side
      by side (batching), so the factor counts busy slots as a share: a fast replica with 3
      of 4 slots busy still answers in its usual time, and the serial ``inflight + 1``
      would price it at 4x and send work to a 5x slower idle replica instead. Queueing
      inside a replica still shows, as latency, in its estimate.
    * Full scan for up to ``FULL_SCAN_MAX`` candidates, power of two choices above;
      random tie-break in both.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        rng: random.Random,
        decay_s: float = 10.0,
        default_rtt_s: float = 0.03,
        penalty_s: float = 1.0,
        slots: int = 1,
    ) -> None:
        if min(decay_s, default_rtt_s, penalty_s, slots) <= 0:
            raise ValueError("peak_ewma: decay_s, default_rtt_s, penalty_s, slots must be > 0")
        self.clock = clock
        self.slots = slots
        self.rng = rng
        self.decay_s = decay_s
        self.default_rtt_s = default_rtt_s
        self.penalty_s = penalty_s
        self._state: dict[str, _Ewma] = {}
        self._typical: float | None = None  # the pool's typical successful latency

    def estimate(self, replica: Replica) -> float:
        """The latency estimate ``pick`` uses now (seconds), before the inflight factor."""
        return self._estimate(replica, self.clock())

    def _estimate(self, replica: Replica, now: float) -> float:
        typical = self.default_rtt_s if self._typical is None else self._typical
        s = self._state.get(replica.id)
        if s is None:
            return typical
        w = math.exp(-max(now - s.stamp, 0.0) / self.decay_s)
        return typical + (s.value - typical) * w

    def pick(self, candidates: Sequence[Replica]) -> Replica | None:
        if not candidates:
            return None
        now = self.clock()

        def cost(r: Replica) -> float:
            return self._estimate(r, now) * (1.0 + r.inflight / self.slots)

        if len(candidates) <= FULL_SCAN_MAX:
            return _full_scan(candidates, cost, self.rng)
        return _two_choices(candidates, cost, self.rng)

    def on_start(self, replica: Replica) -> None:
        pass  # the pool's inflight count is all the cost needs

    def on_end(self, replica: Replica, latency_s: float, ok: bool) -> None:
        now = self.clock()
        s = self._state.get(replica.id)
        if s is None:  # from zero, so the peak rule makes the first sample the estimate
            s = self._state[replica.id] = _Ewma(0.0, now, 0.0, now)
        if ok:
            sample = latency_s
            typical = self._typical
            self._typical = (
                sample if typical is None else typical + (sample - typical) / TYPICAL_SAMPLES
            )
            s.ok_value = _peak_ewma(s.ok_value, s.ok_stamp, sample, now, self.decay_s)
            s.ok_stamp = now
        else:
            sample = max(latency_s, self.penalty_s, PENALTY_FACTOR * s.ok_value)
        s.value = _peak_ewma(s.value, s.stamp, sample, now, self.decay_s)
        s.stamp = now

    def forget(self, replica_id: str) -> None:
        self._state.pop(replica_id, None)


POLICIES: dict[str, Callable[..., Policy]] = {
    "round_robin": RoundRobin,
    "least_connections": LeastConnections,
    "p2c": PowerOfTwoChoices,
    "peak_ewma": PeakEwma,
}
POLICY_NAMES: frozenset[str] = frozenset(POLICIES)


def make_policy(name: str, *, clock: Clock, rng: random.Random, **params: float) -> Policy:
    """A new policy by its config name; ``params`` go to its constructor (peak_ewma takes
    ``decay_s``, ``default_rtt_s``, ``penalty_s``, ``slots``). Unknown names raise ValueError."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; one of {', '.join(sorted(POLICIES))}") from None
    return factory(clock=clock, rng=rng, **params)
