"""A pool's demand from its offered load (Little's law), not from what it holds.

The gateway sees every arrival, those that queue, are shed or wait for a cold start
included. The concurrency its arrivals ask for is their rate x the time a request holds
a replica's slot. In-flight + queued, the signal this replaces, also counts the backlog
that queues while replicas start: read as demand, a step that 3 replicas carry asked for
8 (``load.bench burst``), and every cold start looked like a surge. The backlog is a term
of its own here (``backlog_concurrency``): the concurrency that would serve what is left
of it when a replica started now would be ready (``backlog_left``), within a horizon,
added to the ask at the moment, never averaged into the history.

Pure: the pool's running totals, its service time and the time come in as arguments.
The service time is the pool's (``admission.ServiceTime``: slot-seconds over answers,
by Little's law on the replicas), which admission reads too. Parked answers (a client
that reads nothing) are no slot-seconds: slow readers must not buy replicas.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.dataplane.pool import Tally


class OfferedLoad:
    """The offered concurrency of one pool, updated once per autoscaler tick.

    Invariants: ``rate`` is the arrivals per second over the last interval;
    ``service_s`` the pool's service time as of the last update (None until some answer
    came); ``concurrency`` is their product, or None while the service time is unknown.
    """

    def __init__(self, tally: Tally, now: float) -> None:
        self._last, self._at = tally, now  # the totals and time of the last update
        self.rate = 0.0
        self.service_s: float | None = None

    def update(self, tally: Tally, now: float, service_s: float | None) -> float | None:
        """Take the totals and service time at ``now``; the offered concurrency since
        the last update."""
        self.service_s = service_s
        span = now - self._at
        if span > 0:
            self.rate = (tally.arrivals - self._last.arrivals) / span
            self._last, self._at = tally, now
        return self.concurrency

    @property
    def concurrency(self) -> float | None:
        return None if self.service_s is None else self.rate * self.service_s

    def backlog_concurrency(self, queued: float, horizon_s: float) -> float:
        """The concurrency that serves ``queued`` waiting requests within ``horizon_s``
        (0 while the service time is unknown: nothing says what they will cost)."""
        if self.service_s is None:
            return 0.0
        return queued * self.service_s / horizon_s


def backlog_left(
    queued: float,
    demand: float,
    service_s: float,
    capacity: float,
    arriving: Sequence[tuple[float, float]],
    at_s: float,
) -> float:
    """The requests still queued ``at_s`` from now (when a replica started now would be
    ready), if nothing else changes: the start-up credit. A fluid queue drains at
    (capacity - demand) / service_s a second (grows while that is negative), the
    capacity (slots serving) growing by ``slots`` at each ``(in_s, slots)`` of
    ``arriving``: the replicas starting, at their expected ready times. A backlog that
    what is ready and starting clears by then is no reason for one more replica."""
    left, t = float(queued), 0.0
    for in_s, slots in [*sorted(a for a in arriving if a[0] < at_s), (at_s, 0.0)]:
        in_s = max(0.0, in_s)
        left = max(0.0, left + (demand - capacity) * (in_s - t) / service_s)
        t, capacity = in_s, capacity + slots
    return left
