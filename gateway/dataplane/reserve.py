"""Room kept free for critical requests, so that under saturation they find a slot at once.

A queue ordered by class makes a critical request wait only for the next slot to free;
on a saturated pool of streams that last seconds, that is still hundreds of
milliseconds. So the lower classes leave some slots free while critical requests come:
the fewest ``h`` for which a critical arrival finds all ``h`` taken with probability at
most ``MISS``. The reserve is a birth-death chain: critical arrivals take its slots (rate
``lam``), the pool's freed slots refill it first (rate ``mu``, every class's
completions), so with ``rho = lam / mu`` it is empty with probability
``rho^h / (1 + rho + ... + rho^h)`` (the M/M/1/h loss formula).

The price is paid only under saturation, by the lower classes, and is bounded: at most
``MAX_SHARE`` of the pool's slots, and none at all once no critical request came for
``QUIET_S`` (a pool without priorities pays nothing). Pure: time comes in as an argument.
"""

from __future__ import annotations

import math

MISS = 0.02  # the chance a critical arrival finds the reserve taken, at most
MAX_SHARE = 0.25  # the most of a pool's slots the lower classes leave free
QUIET_S = 60.0  # no critical request for this long: no reserve
RATE_S = 10.0  # the time constant of the rate estimates


class Rate:
    """Events per second, decayed exponentially with time constant ``RATE_S``."""

    def __init__(self) -> None:
        self._count = 0.0
        self._stamp = 0.0
        self.last: float | None = None  # when the last event came

    def add(self, now: float) -> None:
        self._count = self._decayed(now) + 1.0
        self._stamp = self.last = now

    def per_s(self, now: float) -> float:
        return self._decayed(now) / RATE_S

    def _decayed(self, now: float) -> float:
        return self._count * math.exp(-max(0.0, now - self._stamp) / RATE_S)


def empty_chance(rho: float, h: int) -> float:
    """How often a reserve of ``h`` slots is all taken (the module's formula)."""
    return rho**h / sum(rho**i for i in range(h + 1))


class Reserve:
    def __init__(self) -> None:
        self.critical = Rate()  # critical requests arriving
        self.freed = Rate()  # slots freed, any class

    def slots(self, now: float, pool_slots: int) -> int:
        """How many of the pool's ``pool_slots`` a non-critical request must leave free."""
        last = self.critical.last
        if last is None or now - last > QUIET_S:
            return 0
        most = math.floor(pool_slots * MAX_SHARE)
        if most == 0:
            return 0
        mu = self.freed.per_s(now)
        if mu <= 0.0:
            return 1  # nothing freed yet to measure by: the least that helps
        rho = self.critical.per_s(now) / mu
        h = 1
        while h < most and empty_chance(rho, h) > MISS:
            h += 1
        return h
