"""Health of a replica: active-probe hysteresis and passive outlier ejection.

Pure logic, no I/O: the prober (``prober.py``) and the proxy feed results in, with the
current time as an argument. Two independent verdicts make a replica routable:

* **active** (``up``): flips only after ``fall`` consecutive failed probes, or ``rise``
  consecutive good ones (HAProxy's rise/fall), so one lost probe changes nothing;
* **passive** (``ejected_until``): ``consecutive_failures`` failed requests in a row eject
  the replica for ``base x n`` seconds on its n-th ejection, capped at ``max``, like Envoy's
  outlier detection. The pool decides whether an ejection is allowed at all (the
  max-ejected-percent cap is a property of the pool, not of one replica).

An attempt that a hedge's backup outran (``proxy.py``) is a failure only if the replica
had kept it far longer than its own usual head latency (``usual_s``, an average of its
recent heads): that replica hung. One that is merely slower than its peers, a smaller GPU
in a mixed pool, loses such races at its usual pace and is not ejected for it.

When the active verdict comes back up, an ejection still running is lifted: the replica
that failed its checks and now passes them has restarted or recovered, so what its
requests said before is stale (Envoy's ``successful_active_health_check_uneject_host``,
but only on that transition, so a replica that fails requests while passing its checks
stays ejected).
"""

from __future__ import annotations

from dataclasses import dataclass

HUNG_OVER_USUAL = 2.0  # an outrun attempt this many times past the usual head: it hung
USUAL_WEIGHT = 0.1  # of each new head in ``usual_s``: about the last ten count


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
    usual_s: float | None = None  # its recent heads' average latency; None before one

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

    def record_head(self, latency_s: float) -> None:
        """A successful response head came after ``latency_s``."""
        usual = self.usual_s
        self.usual_s = latency_s if usual is None else usual + (latency_s - usual) * USUAL_WEIGHT

    def hung(self, waited_s: float) -> bool:
        """Had an attempt that waited ``waited_s`` without a head outlasted the usual?"""
        return self.usual_s is None or waited_s > HUNG_OVER_USUAL * self.usual_s

    def record_request(self, ok: bool, now: float, rules: HealthRules, may_eject: bool) -> bool:
        """Feed one request outcome; returns True when this failure ejected the replica."""
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
        return True
