"""When a request has waited long enough to deserve a backup attempt on another replica.

Hedged requests (Dean and Barroso, "The Tail at Scale"; Finagle's backup requests): a
request still without a response head after the pool's recent ``percentile`` of head
latency is among the slowest ``100 - percentile`` %, whatever made it slow (a replica
that hung, paused, or is just having a bad moment), so a second attempt goes to another
replica and the first head wins. Sending it at that percentile also bounds the extra
load to about that share of requests; the pool's hedge budget makes the bound hard.

The delay has two floors (``hedge_delay``):

* ``LATE_OVER_MEDIAN`` x the pool's median. Where latency is tight (a model with a steady
  service time) the high percentiles sit just above the median, and backups sent there
  would mostly lose the race to an answer a millisecond away: pure extra load, which
  would also spend the budget that a hung replica's requests need.
* ``OWN_OVER`` x the ``OWN_PERCENTILE`` of the replica's own recent heads. A replica that
  is slower than its peers, or whose answers are heavy-tailed, often takes longer than
  the pool's tail for answers that are normal *for it*; hedging those races its healthy
  work, and under load that extra work is what tips a busy pool into queueing (the
  matrix in ``load/RESULTS.md``, at 90 % load on one-slot replicas). A backup goes out
  only once the wait is unusual against both the pool and the replica: for a replica
  that hung or paused, which is what hedging is for here (model servers rarely finish
  a long answer faster the second time: its length is the request's, not the replica's).

Pure logic: quantiles come from the last samples of a ``Window``, re-sorted every
``refresh`` samples rather than on every request.
"""

from __future__ import annotations

import math

WINDOW = 512  # recent head latencies of the pool the quantile is taken over
REFRESH = 64  # new samples between two re-sorts; before the first, no hedging
LATE_OVER_MEDIAN = 2.0  # a head this many times later than the median is late at any rate
OWN_PERCENTILE = 99.0  # of a replica's own heads
OWN_OVER = 2.0  # a wait this many times past that is unusual for the replica


class Window:
    """The last ``size`` samples, and quantiles of them as of the last re-sort."""

    __slots__ = ("_fresh", "_next", "_ordered", "_samples", "refresh", "size")

    def __init__(self, size: int = WINDOW, refresh: int = REFRESH) -> None:
        self.size = size
        self.refresh = refresh
        self._samples: list[float] = []
        self._next = 0  # where the next sample goes once the window is full
        self._fresh = 0  # samples since the last re-sort
        self._ordered: list[float] = []  # empty until ``refresh`` samples were seen

    def add(self, sample: float) -> None:
        samples = self._samples
        if len(samples) < self.size:
            samples.append(sample)
        else:
            samples[self._next] = sample
            self._next = (self._next + 1) % self.size
        self._fresh += 1
        if self._fresh >= self.refresh:
            self._fresh = 0
            self._ordered = sorted(samples)

    def quantile(self, percentile: float) -> float | None:
        """The nearest-rank ``percentile`` (0-100); None until the first re-sort."""
        ordered = self._ordered
        if not ordered:
            return None
        rank = math.ceil(len(ordered) * percentile / 100) - 1
        return ordered[min(max(0, rank), len(ordered) - 1)]


def hedge_delay(
    pool: Window, own: Window | None, percentile: float, min_delay_s: float
) -> float | None:
    """How long an attempt on a replica whose heads are in ``own`` may wait for its head
    before it gets a backup; None while the pool's tail is unknown. ``own`` may be None
    or not yet known (a new replica): then the pool's figures alone decide."""
    tail, median = pool.quantile(percentile), pool.quantile(50.0)
    if tail is None or median is None:
        return None
    delay = max(min_delay_s, tail, LATE_OVER_MEDIAN * median)
    own_tail = None if own is None else own.quantile(OWN_PERCENTILE)
    return delay if own_tail is None else max(delay, OWN_OVER * own_tail)
