"""When a request has waited long enough to deserve a backup attempt on another replica.

Hedged requests (Dean and Barroso, "The Tail at Scale"; Finagle's backup requests): a
request still without a response head after the pool's recent ``percentile`` of head
latency is among the slowest ``100 - percentile`` %, whatever made it slow (a replica
that hung, paused, or is just having a bad moment), so a second attempt goes to another
replica and the first head wins. Sending it at that percentile also bounds the extra
load to about that share of requests; the pool's hedge budget makes the bound hard.

The delay is never under ``LATE_OVER_MEDIAN`` x the median either. Where latency is
tight (a model with a steady service time) the high percentiles sit just above the median,
and backups sent there would mostly lose the race to an answer a millisecond away: pure
extra load, which would also spend the budget that a hung replica's requests need.

Pure logic: both are taken from the last ``WINDOW`` head latencies, re-sorted every
``REFRESH`` samples rather than on every request.
"""

from __future__ import annotations

import math

WINDOW = 512  # recent head latencies the quantile is taken over
REFRESH = 64  # new samples between two re-sorts; before the first, no hedging
LATE_OVER_MEDIAN = 2.0  # a head this many times later than the median is late at any rate


class HedgeDelay:
    def __init__(self, percentile: float = 98.0, min_delay_s: float = 0.0) -> None:
        self.percentile = percentile
        self.min_delay_s = min_delay_s
        self._samples: list[float] = []
        self._next = 0  # where the next sample goes once the window is full
        self._fresh = 0  # samples since the last re-sort
        self._tail: float | None = None  # None while unknown

    def add(self, latency_s: float) -> None:
        samples = self._samples
        if len(samples) < WINDOW:
            samples.append(latency_s)
        else:
            samples[self._next] = latency_s
            self._next = (self._next + 1) % WINDOW
        self._fresh += 1
        if self._fresh >= REFRESH:
            self._refresh()

    def _refresh(self) -> None:
        self._fresh = 0
        ordered = sorted(self._samples)
        rank = math.ceil(len(ordered) * self.percentile / 100) - 1  # nearest rank
        median = ordered[len(ordered) // 2]
        self._tail = max(ordered[max(0, rank)], LATE_OVER_MEDIAN * median)

    @property
    def value(self) -> float | None:
        """The delay, s; None while too few heads were seen to know the tail."""
        return None if self._tail is None else max(self.min_delay_s, self._tail)
