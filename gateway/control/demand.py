"""A pool's demand from its offered load (Little's law), not from what it holds.

The gateway sees every arrival, those that queue, are shed or wait for a cold start
included. The concurrency its arrivals ask for is their rate x the time a request holds
a replica's slot. In-flight + queued, the signal this replaces, also counts the backlog
that queues while replicas start: read as demand, a step that 3 replicas carry asked for
8 (``load.bench burst``), and every cold start looked like a surge. The backlog is a term
of its own here (``backlog_concurrency``): the concurrency that would serve it within a
horizon, added to the ask at the moment, never averaged into the history.

Pure: the pool's running totals and the time come in as arguments. The service time is
measured from them too, by Little's law on the replicas: slot-seconds held over answers
given, taken from the last update that had answers, so a long stream that spans several
updates counts whole. Parked answers (a client that reads nothing) are no slot-seconds:
slow readers must not buy replicas.
"""

from __future__ import annotations

from gateway.dataplane.pool import Tally

SERVICE_MEMORY = 16.0  # the service time weighs each new answer as one of about this many


class OfferedLoad:
    """The offered concurrency of one pool, updated once per autoscaler tick.

    Invariants: ``rate`` is the arrivals per second over the last interval;
    ``service_s`` is None until some answer came, then a running mean (each interval's
    slot-seconds per answer, weighed by its answers); ``concurrency`` is their product,
    or None while the service time is unknown.
    """

    def __init__(self, tally: Tally, now: float) -> None:
        self._last, self._at = tally, now  # the totals and time of the last update
        self._served = tally  # the totals at the last update that had answers
        self.rate = 0.0
        self.service_s: float | None = None

    def update(self, tally: Tally, now: float) -> float | None:
        """Take the totals at ``now``; the offered concurrency since the last update."""
        answers = tally.answers - self._served.answers
        if answers > 0:
            mean = max(0.0, tally.busy_s - self._served.busy_s) / answers
            if self.service_s is None:
                self.service_s = mean
            else:
                self.service_s += answers / (answers + SERVICE_MEMORY) * (mean - self.service_s)
            self._served = tally
        span = now - self._at
        if span > 0:
            self.rate = (tally.arrivals - self._last.arrivals) / span
            self._last, self._at = tally, now
        return self.concurrency

    @property
    def concurrency(self) -> float | None:
        return None if self.service_s is None else self.rate * self.service_s

    def backlog_concurrency(self, queued: int, horizon_s: float) -> float:
        """The concurrency that serves ``queued`` waiting requests within ``horizon_s``
        (0 while the service time is unknown: nothing says what they will cost)."""
        if self.service_s is None:
            return 0.0
        return queued * self.service_s / horizon_s
