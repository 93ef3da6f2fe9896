"""A reference of Knative's pod autoscaler (KPA) with its published defaults: pure.

The yardstick of ``autoscale-trace``: what a team that moved to Knative would get. The
rules, as Knative documents them ("Configuring the autoscaler", knative.dev, and
``pkg/autoscaler/scaling/autoscaler.go``), with the defaults of its ``config-autoscaler``:

* the signal is the requests in the system (in flight and queued, the activator's
  included), sampled each tick and averaged over a 60 s stable window and a 6 s panic
  window (10 % of it);
* the ask is ceil(average / target): the stable window's, unless panicking;
* panic begins when the panic window asks for 200 % of the ready pods; while in it the
  ask is the highest panic-window ask since it began, never lower; it ends a stable
  window after the condition last held;
* scale-down is at most halving per tick (``max-scale-down-rate`` 2), with no delay
  (``scale-down-delay`` 0);
* to zero: once the ask is 0, the last pod goes after the 30 s grace period
  (``scale-to-zero-grace-period``); from zero, a request held by the activator asks
  for one at once;
* nothing knows start-up times: pods starting are not capacity, and what queues while
  they start is demand.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

STABLE_S = 60.0
PANIC_S = 6.0
PANIC_THRESHOLD = 2.0
MAX_SCALE_DOWN_RATE = 2.0
TO_ZERO_GRACE_S = 30.0
TICK_S = 2.0


@dataclass
class Kpa:
    target: float  # requests in the system per pod
    max_replicas: int
    min_replicas: int = 0

    def __post_init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque()
        self._panic_since: float | None = None  # last time the panic condition held
        self._panic_high = 0
        self._zero_since: float | None = None  # since when the ask has been 0

    def _average(self, now: float, window_s: float) -> float:
        values = [c for t, c in self._samples if t > now - window_s]
        return sum(values) / len(values) if values else 0.0

    def decide(self, now: float, in_system: float, ready: int, current: int) -> int:
        """The pods wanted, given this tick's average ``in_system`` requests, the
        ``ready`` pods and the ``current`` ones (ready and starting)."""
        self._samples.append((now, in_system))
        while self._samples and self._samples[0][0] <= now - STABLE_S:
            self._samples.popleft()
        stable = math.ceil(self._average(now, STABLE_S) / self.target - 1e-9)
        panic_ask = math.ceil(self._average(now, PANIC_S) / self.target - 1e-9)
        if panic_ask / max(1, ready) >= PANIC_THRESHOLD and panic_ask > 0:
            if self._panic_since is None:
                self._panic_high = 0
            self._panic_since = now
        elif self._panic_since is not None and now - self._panic_since >= STABLE_S:
            self._panic_since = None
        if self._panic_since is not None:
            self._panic_high = max(self._panic_high, panic_ask, current)
            desired = self._panic_high
        else:
            desired = max(stable, math.floor(current / MAX_SCALE_DOWN_RATE))
        if in_system > 0 and current == 0:
            desired = max(desired, 1)  # the activator holds a request
        if desired == 0 and current > 0:
            self._zero_since = now if self._zero_since is None else self._zero_since
            if now - self._zero_since < TO_ZERO_GRACE_S:
                desired = 1
        else:
            self._zero_since = None
        return min(max(desired, self.min_replicas), self.max_replicas)
