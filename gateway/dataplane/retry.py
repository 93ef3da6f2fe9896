"""When a failed attempt may be tried again: retryable outcomes and the retry budget.

Pure logic; the clock comes in as an argument. A retry is worth it only for failures that
say "this replica, now" rather than "this request": no connection, a reset, a timeout
before the response head, or a 502/503/504 from the replica. It always goes to a different
replica (the proxy excludes the ones tried) and only before the first byte reached the
client.

The budget is Finagle's and Linkerd's: over the last ``WINDOW_S`` seconds, retries may not
exceed ``percent`` of the requests, plus a reserve of ``min_per_s`` per second so that a
quiet pool can still fail over. When a pool fails wholesale this caps the extra load at a
fixed fraction instead of multiplying it by ``attempts`` (the retry storm). A budget on
retries *in flight* (Envoy's) was tried first and refused the burst of failovers that one
dead replica causes at low concurrency; a windowed ratio absorbs that burst and still
bounds a storm.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

RETRYABLE_STATUS = frozenset({502, 503, 504})
WINDOW_S = 10


class RetryBudget:
    def __init__(
        self, clock: Callable[[], float], percent: float = 20.0, min_per_s: float = 10.0
    ) -> None:
        self.clock = clock
        self.percent = percent
        self.min_per_s = min_per_s
        self._buckets: deque[list[int]] = deque()  # [second, requests, retries], oldest first
        self._requests = 0  # totals over the buckets in the window
        self._retries = 0

    def record_request(self) -> None:
        self._bucket()[1] += 1
        self._requests += 1

    def allows_retry(self) -> bool:
        self._bucket()
        allowed = self._requests * self.percent / 100.0 + self.min_per_s * WINDOW_S
        return self._retries + 1 <= allowed

    def try_retry(self) -> bool:
        """Spend one retry if the budget has room."""
        if not self.allows_retry():
            return False
        self._buckets[-1][2] += 1
        self._retries += 1
        return True

    def _bucket(self) -> list[int]:
        """The current one-second bucket, after dropping those that left the window."""
        second = int(self.clock())
        buckets = self._buckets
        while buckets and buckets[0][0] <= second - WINDOW_S:
            _, requests, retries = buckets.popleft()
            self._requests -= requests
            self._retries -= retries
        if not buckets or buckets[-1][0] != second:
            buckets.append([second, 0, 0])
        return buckets[-1]
