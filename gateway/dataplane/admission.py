"""Deadline-aware admission: a request that would wait past its deadline is refused at once.

A client that will give up after ``d`` seconds gains nothing from a place in a queue it
cannot leave in time: it times out anyway, having held a queue slot and, often, been
retried into the same queue. So a request with a deadline (the route's ``deadline_s``,
or the client's ``X-Deadline-Ms``) that must wait is first given an estimate of its
wait; above the deadline it gets 503 (429 if sheddable) and ``Retry-After`` now.

The estimate (``expected_wait_s``): on a warm pool, the requests ahead of it (its class
and higher) and itself take the next freed slots, which free at ``slots / service``
per second; on a pool with no live replica, the time until the next replica is expected
to be ready. It errs low (a request is refused only on evidence), and the deadline
still bounds the wait of one that was let in.

Pure: the service time is measured from the pool's totals (``ServiceTime``), by Little's
law on its replicas, and the autoscaler's demand reads the same figure.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.dataplane.pool import Tally

SERVICE_MEMORY = 16.0  # the mean service time weighs each new answer as one of about this many
MAX_DEADLINE_MS = 86_400_000.0  # a day: larger is no deadline a client means


class ServiceTime:
    """The mean time an answer holds a replica's slot: slot-seconds over answers, from
    the pool's running totals. None until the first answer. Each answer weighs once,
    however often ``update`` runs; slot-seconds are taken from the last update that had
    answers, so a long stream that spans several updates counts whole."""

    __slots__ = ("_served", "seconds")

    def __init__(self, tally: Tally) -> None:
        self._served = tally  # the totals at the last update that had answers
        self.seconds: float | None = None

    def update(self, tally: Tally) -> float | None:
        answers = tally.answers - self._served.answers
        if answers > 0:
            mean = max(0.0, tally.busy_s - self._served.busy_s) / answers
            if self.seconds is None:
                self.seconds = mean
            else:
                self.seconds += answers / (answers + SERVICE_MEMORY) * (mean - self.seconds)
            self._served = tally
        return self.seconds


def expected_wait_s(
    ahead: int, slots: float, service_s: float | None, ready_in_s: float | None
) -> float:
    """How long a request that must wait is expected to: ``ready_in_s`` when no replica
    is live (None: one is), else the time for ``ahead + 1`` slots of ``slots`` to free.
    0 when nothing is known (no service time yet): admission needs evidence."""
    if ready_in_s is not None:
        return ready_in_s
    if service_s is None or slots <= 0:
        return 0.0
    return (ahead + 1) * service_s / slots


def retry_after_s(wait_s: float, deadline_s: float) -> int:
    """When the refused request would have fitted, had nothing else come: the excess
    (a millisecond's grace for the time the request took to get here)."""
    return max(1, math.ceil(wait_s - deadline_s - 0.001))


def deadline_of(route_s: float | None, header: str | None) -> float | None:
    """The request's deadline in seconds: its ``X-Deadline-Ms``, else the route's.
    Raises ValueError for a header that is not a positive number of milliseconds."""
    if header is None:
        return route_s
    try:
        ms = float(header)
    except ValueError:
        raise ValueError("X-Deadline-Ms must be a number of milliseconds") from None
    if not 0 < ms <= MAX_DEADLINE_MS:  # also refuses nan and inf
        raise ValueError(f"X-Deadline-Ms must be > 0 and <= {MAX_DEADLINE_MS:.0f}")
    return ms / 1000
