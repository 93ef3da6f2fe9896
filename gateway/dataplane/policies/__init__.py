"""Routing policies: which eligible replica gets the next request.

The pool calls a policy on the event loop thread, for every attempt::

    r = policy.pick(candidates, full, ahead, prompt)  # eligible replicas; None: none, or wait
    policy.on_start(r)                   # after the pool incremented r.inflight
    policy.on_end(r, latency_s, ok)      # after it decremented it; latency = time to first byte
    policy.forget(replica_id)            # the replica left the pool

Invariants every policy keeps:

* ``pick`` returns one of ``candidates``, or None for an empty sequence or (peak_ewma and
  least_connections) when waiting for one of ``full`` (routable replicas at their limit,
  with ``ahead`` requests queued before this one) is cheaper; it never writes to a
  replica: the pool alone owns ``inflight``, ``draining`` and ``cap`` (its limit).
* Routing state lives here, keyed by ``Replica.id``, created lazily (any replica may show up
  at any time) and dropped by ``forget``, so it never outlives the replica.
* The module is pure: time (``clock``, monotonic seconds) and randomness (``rng``) are
  injected, which keeps the logic deterministic under test.
* Equally cheap replicas take turns (``choice.Rotation``: the least recently started first, as
  HAProxy's leastconn rotates within a load level), so a burst of picks spreads evenly;
  replicas never started yet are taken in random order, so several gateways do not all
  pile onto the first one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.dataplane.policies.choice import Clock
from gateway.dataplane.policies.peak_ewma import PeakEwma
from gateway.dataplane.policies.prefix_affinity import PrefixAffinity
from gateway.dataplane.policies.simple import LeastConnections, PowerOfTwoChoices, RoundRobin
from gateway.dataplane.replica import Replica

__all__ = [
    "POLICIES",
    "LeastConnections",
    "PeakEwma",
    "Policy",
    "PowerOfTwoChoices",
    "PrefixAffinity",
    "RoundRobin",
    "make_policy",
]  # fmt: skip


class Policy(Protocol):
    reads_prompt: bool  # does ``pick`` use the request's prompt blocks (prefix.py)?

    def pick(
        self,
        candidates: Sequence[Replica],
        full: Sequence[Replica] = (),
        ahead: int = 0,
        prompt: Sequence[int] = (),
    ) -> Replica | None: ...
    def on_start(self, replica: Replica) -> None: ...
    def on_end(self, replica: Replica, latency_s: float, ok: bool) -> None: ...
    def forget(self, replica_id: str) -> None: ...


POLICIES: dict[str, Callable[..., Policy]] = {
    "round_robin": RoundRobin,
    "least_connections": LeastConnections,
    "p2c": PowerOfTwoChoices,
    "peak_ewma": PeakEwma,
    "prefix_affinity": PrefixAffinity,
}


def make_policy(name: str, *, clock: Clock, rng: random.Random, **params: float) -> Policy:
    """A new policy by its config name; ``params`` go to its constructor (peak_ewma takes
    ``relax_s``, ``default_rtt_s``, ``penalty_s``). Unknown names raise ValueError."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; one of {', '.join(sorted(POLICIES))}") from None
    return factory(clock=clock, rng=rng, **params)
