"""The policies that look at nothing but the replicas' in-flight counts."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.dataplane.policies.choice import (
    Clock,
    Rotation,
    full_frees_sooner,
    full_scan,
    inflight,
    two_choices,
)
from gateway.dataplane.replica import Replica


class _Stateless:
    """Shared constructor and no-op hooks for policies that only look at ``inflight``."""

    reads_prompt = False

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

    def pick(
        self,
        candidates: Sequence[Replica],
        full: Sequence[Replica] = (),
        ahead: int = 0,
        prompt: Sequence[int] = (),
    ) -> Replica | None:
        if not candidates:
            return None
        replica = candidates[self._next % len(candidates)]
        self._next += 1
        return replica


class LeastConnections(_Stateless):
    """Fewest requests in flight, by a full scan: with few replicas and long requests (GPUs)
    a sampled choice misses the idle replica too often (Envoy added FULL_SCAN for this).
    Replicas' limits differ (each is learnt): when a ``full`` one has fewer requests in
    flight, the queue ``ahead`` spread over them counted, the request waits for it
    (None) rather than pile onto the one replica whose limit is still high."""

    def __init__(self, *, clock: Clock, rng: random.Random) -> None:
        super().__init__(clock=clock, rng=rng)
        self.turns = Rotation(rng)

    def on_start(self, replica: Replica) -> None:
        self.turns.started(replica)

    def forget(self, replica_id: str) -> None:
        self.turns.forget(replica_id)

    def pick(
        self,
        candidates: Sequence[Replica],
        full: Sequence[Replica] = (),
        ahead: int = 0,
        prompt: Sequence[int] = (),
    ) -> Replica | None:
        if not candidates:
            return None
        chosen = full_scan(candidates, inflight, self.turns)
        return None if full_frees_sooner(chosen, full, ahead) else chosen


class PowerOfTwoChoices(_Stateless):
    """Least connections over two random candidates: O(1), for large pools."""

    def pick(
        self,
        candidates: Sequence[Replica],
        full: Sequence[Replica] = (),
        ahead: int = 0,
        prompt: Sequence[int] = (),
    ) -> Replica | None:
        return two_choices(candidates, inflight, self.rng) if candidates else None
