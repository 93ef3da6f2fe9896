"""Health of a replica: active-probe hysteresis and passive outlier ejection.

Pure logic, no I/O: the prober (``prober.py``) and the proxy feed results in, with the
current time as an argument. Two independent verdicts make a replica routable:

* **active** (``up``): flips only after ``fall`` consecutive failed probes, or ``rise``
  consecutive good ones (HAProxy's rise/fall), so one lost probe changes nothing;
* **passive** (``ejected_until``): ``consecutive_failures`` failed requests in a row eject
  the replica for ``base x n`` seconds on its n-th ejection, capped at ``max``, like Envoy's
  outlier detection. The pool decides whether an ejection is allowed at all (the
  max-ejected-percent cap is a property of the pool, not of one replica).

An attempt that a hedge's backup outran (``proxy.py``) is a failure only on evidence that
the replica hung (``hung``), never because a race was lost: a backup wins often enough by
chance on a healthy pool with a heavy tail, and a replica that is merely slower than its
peers (a smaller GPU in a mixed pool) loses such races at its usual pace.

When the active verdict comes back up, an ejection still running is lifted: the replica
that failed its checks and now passes them has restarted or recovered, so what its
requests said before is stale (Envoy's ``successful_active_health_check_uneject_host``,
but only on that transition, so a replica that fails requests while passing its checks
stays ejected).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.dataplane.hedging import OWN_PERCENTILE, Window

OWN_WINDOW = 256  # a replica's recent heads its own tail is taken over
OWN_REFRESH = 32
HUNG_OVER_OWN = 3.0  # silent this many times its own p99 of heads, a busy replica hung


@dataclass(frozen=True, slots=True)
class HealthRules:
    rise: int = 2
    fall: int = 3
    consecutive_failures: int = 5
    base_ejection_s: float = 10.0
    max_ejection_s: float = 300.0


@dataclass(slots=True)
class ReplicaHealth:
    up: bool = True  # active verdict; replicas start up, passive checks cover the gap
    streak: int = 0  # consecutive probe results that disagree with `up`
    failures: int = 0  # consecutive failed requests
    ejections: int = 0  # times ejected so far; lengthens the next ejection
    ejected_until: float = 0.0
    ejected_by_hedging: bool = False  # was the failure that ejected it a hang under a hedge
    heads: Window = field(default_factory=lambda: Window(OWN_WINDOW, OWN_REFRESH))
    last_head_at: float = float("-inf")  # clock time of its last successful response head
    unanswered: int = 0  # attempts sent to it since then (the pool counts them)

    def routable(self, now: float) -> bool:
        return self.up and now >= self.ejected_until

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def record_probe(self, ok: bool, rules: HealthRules) -> bool:
        """Feed one active probe result; returns True when ``up`` flipped."""
        if ok == self.up:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < (rules.rise if ok else rules.fall):
            return False
        self.up, self.streak = ok, 0
        if ok:
            self.failures = 0
            self.ejected_until = 0.0
        return True

    def record_head(self, latency_s: float, now: float) -> None:
        """A successful response head came after ``latency_s``, at ``now``."""
        self.heads.add(latency_s)
        self.last_head_at = now
        self.unanswered = 0

    def hung(self, waited_s: float, now: float) -> bool:
        """Did the replica hang, given that an attempt on it was outrun after waiting
        ``waited_s``?

        Only if it has answered nobody for ``HUNG_OVER_OWN`` x its own recent tail (and
        at least since the attempt was sent), although another attempt sent since its
        last answer is unanswered too (still on it, or given up on). A working replica
        answers *something*: one request stuck behind a long one at a one-slot replica
        is silent for that long answer only, which its own tail already covers, while a
        hung replica's silence grows until it passes any multiple of it. One attempt
        alone tells a long answer from a hang by nothing (the health checks and the
        policy's estimate cover that case)."""
        silent_s = now - self.last_head_at
        own_tail = self.heads.quantile(OWN_PERCENTILE)
        long_enough = waited_s if own_tail is None else max(waited_s, HUNG_OVER_OWN * own_tail)
        return self.unanswered >= 2 and silent_s >= long_enough

    def record_request(
        self, ok: bool, now: float, rules: HealthRules, may_eject: bool, by_hedging: bool = False
    ) -> bool:
        """Feed one request outcome; returns True when this failure ejected the replica.
        ``by_hedging``: the failure is a hang that a hedge's backup revealed."""
        if ok:
            self.failures = 0
            return False
        self.failures += 1
        if self.failures < rules.consecutive_failures or self.ejected(now) or not may_eject:
            return False
        self.ejections += 1
        self.failures = 0
        duration = min(rules.base_ejection_s * self.ejections, rules.max_ejection_s)
        self.ejected_until = now + duration
        self.ejected_by_hedging = by_hedging
        return True
