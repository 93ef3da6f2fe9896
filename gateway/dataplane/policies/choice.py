"""What the policies share: turns among equally cheap replicas, the two ways of finding
the cheapest (a full scan, two random choices), and when waiting for a full replica beats
piling onto a free one."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from gateway.dataplane.replica import Replica

Clock = Callable[[], float]


class Rotation:
    """Turns among equals: the least recently started first. Random ties left replicas
    with constant service times unevenly loaded after bursts: the matrix's
    ``const-s4-l70`` p99 was 31.0-31.2 ms with them, 29.0-29.6 with turns (HAProxy 28.9)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._started: dict[str, int] = {}  # replica id -> the start count when last started
        self._count = 0

    def first(self, ties: Sequence[Replica]) -> Replica:
        never = [r for r in ties if r.id not in self._started]
        if never:
            return self.rng.choice(never)
        return min(ties, key=lambda r: self._started[r.id])

    def started(self, replica: Replica) -> None:
        self._count += 1
        self._started[replica.id] = self._count

    def forget(self, replica_id: str) -> None:
        self._started.pop(replica_id, None)


def full_scan(
    candidates: Sequence[Replica], cost: Callable[[Replica], float], turns: Rotation
) -> Replica:
    """The cheapest candidate; among equally cheap ones, the one whose turn it is."""
    best, best_cost = [candidates[0]], cost(candidates[0])
    for r in candidates[1:]:
        c = cost(r)
        if c < best_cost:
            best, best_cost = [r], c
        elif c == best_cost:
            best.append(r)
    return best[0] if len(best) == 1 else turns.first(best)


def two_choices(
    candidates: Sequence[Replica], cost: Callable[[Replica], float], rng: random.Random
) -> Replica:
    """The cheaper of two distinct random candidates. ``sample`` returns them in random
    order, so keeping the first on a tie is a fair coin."""
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(candidates, 2)
    return b if cost(b) < cost(a) else a


def inflight(replica: Replica) -> float:
    return replica.inflight


def full_frees_sooner(chosen: Replica, full: Sequence[Replica], ahead: int) -> bool:
    """Has a full replica fewer requests in flight than ``chosen``, counting the queue
    ``ahead`` spread over the full ones? Then waiting for it beats piling onto ``chosen``."""
    return bool(full) and min(r.inflight for r in full) + ahead / len(full) < chosen.inflight
