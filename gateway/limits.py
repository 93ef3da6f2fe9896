"""A replica's concurrency limit, learnt from its latency against its in-flight count.

A model server answers some number of requests side by side (its slots, its batch);
past that knee, extra requests queue inside it, where each one adds latency and no
routing can move them. Learning the knee keeps them in the gateway's queue instead,
where the policy can still place them, without asking the operator for a number that
moves with batch size, model and GPU.

How (pure logic; time comes in as an argument):

* Answers are grouped by the replica's in-flight count when each came back (itself
  included), in levels that double: 1, 2-3, 4-7, 8-15, ... Each level keeps a running
  mean and variance of log latency, so a heavy tail moves it little, and the mean
  in-flight count of its answers.
* The baseline is the lowest level with ``MIN_SAMPLES``. The first level above it whose
  latency is higher by more than ``CONGESTED`` x, and by more than ``Z`` standard errors
  of the difference, is congested. With ``c`` slots, ``k > c`` requests in flight take
  about ``k / c`` times as long as one alone, so the replica's concurrency is about that
  level's mean in-flight count over its latency ratio: that is the limit, rounded and
  kept between ``floor`` and ``ceiling``.
* With no congested level the limit is the ceiling: it comes down only on evidence,
  never because latency is noisy or nothing was measured yet.
* Evidence ages: a level's weight decays with time (``AGE_S``). Once the limit holds the
  replica below a congested level, that level gets no new answers and is forgotten; the
  limit then rises again, at most doubling every ``RAISE_S``, to probe. So a replica that
  batches more, or was replaced behind the same address, gets its room back, and one that
  batches less shows congestion at a lower level and is limited at once. A replica that
  merely slows down moves every level alike and keeps its limit.

The anchors are Envoy's adaptive concurrency filter and Netflix's concurrency-limits
(Vegas, Gradient2), which compare latency with a minimum RTT; a minimum is the wrong
baseline for heavy-tailed service times (the fastest answer in a window says nothing
about the typical one), hence means of log latency by level here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVELS = 10  # in-flight counts up to 2**LEVELS - 1 get their own level; more share the last
MIN_SAMPLES = 8.0  # a level with fewer (decayed) answers says nothing
MAX_WEIGHT = 32.0  # a level's weight is capped: new answers count at least 1/32, and a
# level forgotten by AGE_S falls under MIN_SAMPLES in AGE_S x ln(32 / 8), about 28 s
CONGESTED = math.log(1.5)  # log latency ratio over the baseline that counts as congestion
Z = 3.0  # and it must exceed this many standard errors of the difference
AGE_S = 20.0  # time constant of the decay of a level's weight
RAISE_S = 2.0  # the limit rises at most once (doubling) per this long


@dataclass(slots=True)
class _Level:
    weight: float = 0.0  # answers seen, decayed with time
    mean: float = 0.0  # of log latency
    var: float = 0.0  # of log latency
    inflight: float = 0.0  # mean in-flight count of its answers
    stamp: float = 0.0

    def weight_at(self, now: float) -> float:
        return self.weight * math.exp(-max(0.0, now - self.stamp) / AGE_S)

    def add(self, log_latency: float, inflight: int, now: float) -> None:
        self.weight = min(self.weight_at(now) + 1.0, MAX_WEIGHT)
        self.stamp = now
        a = 1.0 / self.weight
        d = log_latency - self.mean
        self.mean += a * d
        self.var = (1.0 - a) * (self.var + a * d * d)
        self.inflight += a * (inflight - self.inflight)

    def stderr2(self, now: float) -> float:
        """Squared standard error of ``mean``."""
        return self.var / max(self.weight_at(now), 1.0)


def level_of(inflight: int) -> int:
    """0 for 1 in flight, 1 for 2-3, 2 for 4-7, ...; the last level takes the rest."""
    return min(max(inflight, 1).bit_length() - 1, LEVELS - 1)


class ConcurrencyLimit:
    """One replica's learnt limit: ``value`` requests in flight at most."""

    def __init__(self, ceiling: int, floor: int = 1) -> None:
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.value = ceiling
        self._levels = [_Level() for _ in range(LEVELS)]
        self._raised_at = float("-inf")

    def set_ceiling(self, ceiling: int) -> None:
        """A new ceiling (on reload): what was learnt stays, the limit is kept under it."""
        self.ceiling = ceiling
        self.floor = min(self.floor, ceiling)
        self.value = min(self.value, ceiling)

    def record(self, latency_s: float, inflight: int, now: float) -> None:
        """A successful answer after ``latency_s`` with ``inflight`` requests on the
        replica when it came back (itself included)."""
        self._levels[level_of(inflight)].add(math.log(max(latency_s, 1e-6)), inflight, now)
        self.update(now)

    def update(self, now: float) -> None:
        """Move the limit toward what the evidence says: down at once, up by doubling."""
        target = self.target(now)
        if target < self.value:
            self.value = target
        elif target > self.value and now - self._raised_at >= RAISE_S:
            self.value = min(target, 2 * self.value)
            self._raised_at = now

    def target(self, now: float) -> int:
        """The limit the current evidence calls for (see the module's docstring)."""
        base: _Level | None = None
        for level in self._levels:
            if level.weight_at(now) < MIN_SAMPLES:
                continue
            if base is None:
                base = level
                continue
            excess = level.mean - base.mean
            noise = Z * math.sqrt(level.stderr2(now) + base.stderr2(now))
            if excess > CONGESTED and excess > noise:
                concurrency = level.inflight / math.exp(excess)
                return min(self.ceiling, max(self.floor, round(concurrency)))
        return self.ceiling
