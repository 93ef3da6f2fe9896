"""A replica's concurrency limit, learnt from its latency against its in-flight count.

A model server answers some number of requests side by side (its slots, its batch);
past that knee, extra requests queue inside it, where each one adds latency and no
routing can move them. Learning the knee keeps them in the gateway's queue instead,
where the policy can still place them, without asking the operator for a number that
moves with batch size, model and GPU.

How (pure logic; time comes in as an argument):

* Answers are grouped by the replica's in-flight count when each was sent (itself
  included: the requests it queued behind, or was served beside), in levels that
  double: 1, 2-3, 4-7, 8-15, ... Each level keeps a running mean and variance of log
  latency, so a heavy tail moves it little, and the mean in-flight count of its answers.
  Levels are kept per kind of request (its path; ``KINDS`` at most), and the kind with
  the most recent answers decides: latency compared across kinds says nothing about
  congestion (a health check sent one at a time answers in 0.5 ms, the model's calls
  beside it in 10 ms), so a cheap kind must not cut the limit of a costly one.
* The baseline is the lowest level with ``MIN_SAMPLES``. The first level above it whose
  latency is higher by more than ``CONGESTED`` x, and by more than ``Z`` standard errors
  of the difference, is congested. With ``c`` slots, ``k > c`` requests in flight take
  about ``k / c`` times as long as one alone, so the replica's concurrency is about that
  level's mean in-flight count over its latency ratio. The limit is ``HEADROOM`` x that,
  rounded up, never under the mean in-flight count of a level below found uncongested,
  and between ``floor`` and ``ceiling``. The headroom is there because the two errors
  cost differently: a limit a little over the knee queues a request or two inside the
  replica, as least-connections would; one under it idles slots, and near saturation
  that capacity is what keeps the queue finite. It also keeps the next request waiting
  at a one-slot replica, so the slot does not idle for the round trip through the
  gateway between two requests: a knee read under 1 counts as 1 (on one slot with
  exponential service times, 2 in flight look 2.7x one alone in a mean of logs).
* A new replica starts at ``INITIAL``, not at the ceiling: flooded with 64 requests, a
  one-slot replica would answer only from a level far above its knee, with no lower
  level to compare with. The limit doubles while it is reached, its own level is known
  and no level up to there is congested: it climbs level by level, each one the base
  of the next comparison. Held at its limit by a queue, a replica answers from one
  level only; when the next level up is slower in proportion to its in-flight count,
  the knee is at the lower level or below it, and the limit holds there (no cut into
  capacity on a guess) until the demand varies and a lower level shows where. It comes
  down only on evidence of congestion, never because latency is noisy, and stops at
  the ceiling.
* Evidence ages: a level is forgotten ``FORGET_S`` after its last answer. Once the
  limit holds the replica below a congested level, that level gets no new answers and
  is forgotten; the limit then rises again as above, at most once every ``RAISE_S``
  after a knee was found, to probe. So a replica that batches more, or was replaced
  behind the same address, gets its room back, and one that batches less shows
  congestion at a lower level and is limited at once. A replica that merely slows down
  moves every level alike and keeps its limit: the levels it is held at see the change
  first, so the base is compared at the mean of its last few answers when that is
  higher (a base that slowed with the rest shows no congestion).

The anchors are Envoy's adaptive concurrency filter and Netflix's concurrency-limits
(Vegas, Gradient2), which compare latency with a minimum RTT; a minimum is the wrong
baseline for heavy-tailed service times (the fastest answer in a window says nothing
about the typical one), hence means of log latency by level here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

LEVELS = 10  # in-flight counts up to 2**LEVELS - 1 get their own level; more share the last
MIN_SAMPLES = 16.0  # a level with fewer answers says nothing
MAX_WEIGHT = 64.0  # a level's running mean weighs each new answer at least 1/64
RECENT_WEIGHT = 8.0  # and its mean of recent answers, each new answer 1/8
CONGESTED = math.log(1.5)  # log latency ratio over the baseline that counts as congestion
Z = 3.0  # and it must exceed this many standard errors of the difference
FORGET_S = 30.0  # a level without an answer for this long is forgotten
RAISE_S = 2.0  # once a knee was found, the limit rises at most once (doubling) per this long
INITIAL = 8  # a new replica's limit (under the ceiling)
KINDS = 4  # kinds of request (paths) with their own levels; a new one evicts the stalest
HEADROOM = 1.5  # the limit is this x the concurrency found, rounded up
PROPORTIONAL = 1.25  # a congested level's concurrency at most this x the base's in-flight:
# latency grew in proportion to the in-flight count from the base on


@dataclass(slots=True)
class _Level:
    count: float = 0.0  # answers seen, capped at MAX_WEIGHT
    mean: float = 0.0  # of log latency
    recent: float = 0.0  # of log latency, over about the last RECENT_WEIGHT answers
    var: float = 0.0  # of log latency
    inflight: float = 0.0  # mean in-flight count of its answers
    stamp: float = float("-inf")  # when its last answer came

    def known(self, now: float) -> bool:
        return self.count >= MIN_SAMPLES and now - self.stamp <= FORGET_S

    def add(self, log_latency: float, inflight: int, now: float) -> None:
        if now - self.stamp > FORGET_S:  # stale: start over
            self.count, self.mean, self.var, self.inflight = 0.0, log_latency, 0.0, inflight
            self.recent = log_latency
        self.count = min(self.count + 1.0, MAX_WEIGHT)
        self.stamp = now
        a = 1.0 / self.count
        d = log_latency - self.mean
        self.mean += a * d
        self.recent += max(a, 1.0 / RECENT_WEIGHT) * (log_latency - self.recent)
        self.var = (1.0 - a) * (self.var + a * d * d)
        self.inflight += a * (inflight - self.inflight)

    def stderr2(self) -> float:
        """Squared standard error of ``mean``."""
        return self.var / self.count


@dataclass(slots=True)
class _Kind:
    """The levels of one kind of request, and how many answers it had lately."""

    levels: list[_Level] = field(default_factory=lambda: [_Level() for _ in range(LEVELS)])
    recent: float = 0.0  # answers, each weighing less with age (time constant FORGET_S)
    stamp: float = float("-inf")

    def add(self, now: float) -> None:
        self.recent = self.weight(now) + 1.0
        self.stamp = now

    def weight(self, now: float) -> float:
        return self.recent * math.exp(-(now - self.stamp) / FORGET_S)


def level_of(inflight: int) -> int:
    """0 for 1 in flight, 1 for 2-3, 2 for 4-7, ...; the last level takes the rest."""
    return min(max(inflight, 1).bit_length() - 1, LEVELS - 1)


class ConcurrencyLimit:
    """One replica's learnt limit: ``value`` requests in flight at most; ``concurrency``,
    the knee that limit was found from (the limit itself until one is found)."""

    def __init__(self, ceiling: int, floor: int = 1, initial: int = INITIAL) -> None:
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.value = min(ceiling, max(self.floor, initial))
        self.concurrency = float(self.value)  # the knee itself, once found; else the limit
        self._kinds: dict[str, _Kind] = {}
        self._levels: list[_Level] = []  # the busiest kind's: what the limit is learnt from
        self._found = False  # a knee seen over a base known to be below it: slow start ends
        self._changed_at = float("-inf")  # when congestion last lowered it, or it rose

    @property
    def found(self) -> bool:
        """Has a knee been found, so that ``concurrency`` is a measured one?"""
        return self._found

    def set_ceiling(self, ceiling: int) -> None:
        """A new ceiling (on reload): what was learnt stays, the limit is kept under it."""
        self.ceiling = ceiling
        self.floor = min(self.floor, ceiling)
        self.value = min(self.value, ceiling)

    def record(self, latency_s: float, inflight: int, now: float, kind: str = "") -> None:
        """A successful answer after ``latency_s`` to a request of ``kind`` (its path),
        sent when ``inflight`` requests were on the replica (itself included)."""
        entry = self._kinds.get(kind)
        if entry is None:
            if len(self._kinds) >= KINDS:
                stalest = min(self._kinds, key=lambda k: self._kinds[k].stamp)
                del self._kinds[stalest]
            entry = self._kinds[kind] = _Kind()
        entry.add(now)
        entry.levels[level_of(inflight)].add(math.log(max(latency_s, 1e-6)), inflight, now)
        kinds = self._kinds
        busiest = entry if len(kinds) == 1 else max(kinds.values(), key=lambda k: k.weight(now))
        self._levels = busiest.levels
        target = self._target(now)
        if not self._found:
            self.concurrency = float(min(target, self.value))
        if target < self.value:  # congestion (or a look below): down at once
            self.value, self._changed_at = target, now
        elif (
            target > self.value
            and inflight >= self.value  # reached: the demand is there
            and self._levels[level_of(self.value)].known(now)
            and (not self._found or now - self._changed_at >= RAISE_S)  # slow start
        ):
            self.value, self._changed_at = min(target, 2 * self.value), now

    def _target(self, now: float) -> int:
        """The limit the evidence calls for (see the module's docstring), noting a knee
        it finds: the ceiling when no level is congested; else from the concurrency the
        first congested level shows over the lowest known level (the base). Until a
        knee was found for sure, an estimate no higher than the base's own in-flight
        count means latency grew in proportion from the base on, so the knee is at the
        base or below it: the limit holds at the base until a lower level shows which.
        (Once a knee was found, the same figure is the knee seen from just above it.)"""
        base: _Level | None = None
        fine = self.floor  # in flight at the highest level seen uncongested so far
        for i, level in enumerate(self._levels):
            if not level.known(now):
                continue
            if base is None:
                base, base_index = level, i
            else:
                excess = level.mean - max(base.mean, base.recent)
                noise = Z * math.sqrt(level.stderr2() + base.stderr2())
                if excess > CONGESTED and excess > noise:
                    concurrency = level.inflight / math.exp(excess)
                    proportional = concurrency <= PROPORTIONAL * base.inflight
                    if base_index > 0 and proportional and not self._found:
                        # proportional from the base on: the knee is at the base or
                        # below; hold there until a lower level shows which
                        return min(self.value, max(self.floor, math.ceil(base.inflight)))
                    self._found = True
                    self.concurrency = max(1.0, concurrency)  # a replica serves one at least
                    limit = math.ceil(HEADROOM * self.concurrency - 1e-9)
                    return min(self.ceiling, max(fine, limit))
            fine = max(fine, int(level.inflight))
        return self.ceiling
