"""Warm tiers: where a replica the autoscaler no longer needs waits before it is gone.

A replica scaled down is usually needed again; a cold start (create a container, load
the weights) is the longest wait a client meets. Between running and gone a replica can
be held in tiers that cost less and wake faster than a start:

* ``paused``: frozen (``docker pause``, SIGSTOP for a process): no CPU, its memory (and
  an accelerator's) held, awake again in milliseconds;
* ``asleep``: the engine's own sleep mode (vLLM's ``POST /sleep``; an engine the
  operator says has it): the process runs, the accelerator's memory is freed, a
  ``POST /wake_up`` takes seconds (weights back from host memory), not a model load;
* ``stopped``: the container stopped but kept: nothing held but disk (its GPU ids stay
  reserved for it in the ledger), and a start skips the creation;
* gone: removed, its GPU ids back in the ledger.

A drained replica is demoted to the first tier its driver supports and the pool's
``tiers`` allow, then down a tier each time it has spent that tier's time in it; at most
``max_warm`` are held per pool (a replica beyond that goes). A start takes the warmest
held replica first (paused, then stopped), and creates one only when none is held.

Pure: the tier decisions are functions of the tiers allowed and the time in a tier.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Tier = Literal["paused", "asleep", "stopped"]
ORDER: tuple[Tier, ...] = ("paused", "asleep", "stopped")  # the fastest wake first


@dataclass(frozen=True, slots=True)
class TierRules:
    paused_s: float  # how long a replica is held paused (0: not at all)
    asleep_s: float  # then asleep
    stopped_s: float  # then stopped
    max_warm: int  # held in any tier at once, per pool
    supported: frozenset[Tier]  # what the driver (and, for asleep, the engine) can do

    def _time_in(self, tier: Tier) -> float:
        return {"paused": self.paused_s, "asleep": self.asleep_s}.get(tier, self.stopped_s)

    def _usable(self, tiers: Iterable[Tier]) -> Tier | None:
        return next((t for t in tiers if t in self.supported and self._time_in(t) > 0), None)

    def first(self, held: int) -> Tier | None:
        """The tier a replica just drained goes to, with ``held`` already in tiers; None:
        it goes (no tier allowed, or ``max_warm`` reached)."""
        return self._usable(ORDER) if held < self.max_warm else None

    def after(self, tier: Tier, in_tier_s: float) -> Tier | None:
        """Where a replica ``in_tier_s`` into ``tier`` belongs now: the same tier, a
        colder one once its time is spent, or None (gone) past the coldest."""
        if in_tier_s < self._time_in(tier):
            return tier
        return self._usable(ORDER[ORDER.index(tier) + 1 :])
