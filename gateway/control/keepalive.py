"""When a pool that may scale to zero keeps its last replica: learnt from its quiet spells.

A fixed keep-alive is wrong for nearly every pool: too long for one called twice a day
(a GPU paid for hours to save one cold start), too short for one called every two
minutes (a cold start each time). Shahrad et al. ("Serverless in the Wild", USENIX ATC
2020) found the gaps between an application's invocations predictable enough to learn:
keep it loaded up to a high percentile of its gaps, unload it when a gap is longer, and
when even its short gaps are long, unload at once and load it again just before the
next call is likely. Their hybrid histogram policy, here:

* a quiet spell is the time from the moment the pool had nothing to work on or queued
  to the next arrival (``Pool.gaps``); spells shorter than a tick are left out, since
  no decision could act on them;
* with ``MIN_GAPS`` spells known, the last replica is kept from ``prewarm_s`` to
  ``keep_s`` into a spell: ``keep_s`` the ``percentile`` of the spells plus a
  ``MARGIN``, ``prewarm_s`` their ``HEAD_PERCENTILE`` less the margin and the expected
  start-up time (a replica started then is ready as the earliest calls come), or 0 when
  that leaves less than a tick: the replica is then simply kept;
* with fewer, there is no word, and the pool's fixed rules (stable window and
  scale-down delay) decide, as the paper falls back to a fixed keep-alive.

``percentile`` is the one knob: higher keeps replicas warm through more spells (more
replica-seconds, fewer cold starts). Pure: the spells and times come in as arguments.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

MIN_GAPS = 10  # fewer spells say nothing of the next
HEAD_PERCENTILE = 5.0  # of the spells: when the earliest calls come back
MARGIN = 0.1  # the windows widen by this share, either way


@dataclass(frozen=True, slots=True)
class KeepAlive:
    prewarm_s: float  # this far into a quiet spell the last replica is wanted again
    keep_s: float  # ... and from here on, not

    def warm(self, quiet_s: float) -> bool:
        """Is a replica wanted ``quiet_s`` into a quiet spell?"""
        return self.prewarm_s <= quiet_s < self.keep_s


def _nearest_rank(ordered: list[float], percentile: float) -> float:
    rank = math.ceil(len(ordered) * percentile / 100) - 1
    return ordered[min(max(0, rank), len(ordered) - 1)]


def keep_alive(
    gaps: Iterable[float], startup_s: float, percentile: float, tick_s: float
) -> KeepAlive | None:
    """The windows the spells ``gaps`` ask for; None while fewer than ``MIN_GAPS``
    spells of at least a tick are known."""
    spells = sorted(g for g in gaps if g >= tick_s)
    if len(spells) < MIN_GAPS:
        return None
    head = _nearest_rank(spells, HEAD_PERCENTILE) * (1 - MARGIN) - startup_s
    tail = _nearest_rank(spells, percentile) * (1 + MARGIN)
    return KeepAlive(head if head >= tick_s else 0.0, tail)
