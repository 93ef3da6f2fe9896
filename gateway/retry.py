"""When a failed attempt may be tried again: retryable outcomes and the retry budget.

Pure logic. A retry is worth it only for failures that say "this replica, now" rather
than "this request": no connection, a reset, a timeout before the response head, or a
502/503/504 from the replica. It always goes to a different replica (the proxy excludes
the ones tried) and only before the first byte reached the client.

The budget is Envoy's: retries in flight may not exceed ``percent`` of the requests in
flight, with a floor of ``min_concurrent`` so that a quiet pool can still retry. When a
pool is failing wholesale this caps the extra load retries add at a fixed fraction,
instead of multiplying the load by ``attempts`` (the retry-storm failure mode).
"""

from __future__ import annotations

from dataclasses import dataclass

RETRYABLE_STATUS = frozenset({502, 503, 504})


@dataclass(slots=True)
class RetryBudget:
    percent: float = 20.0
    min_concurrent: int = 3
    active: int = 0  # requests in flight, queued ones included
    retrying: int = 0  # retry attempts in flight

    def allows_retry(self) -> bool:
        return self.retrying < max(self.min_concurrent, self.active * self.percent / 100.0)

    def try_start_retry(self) -> bool:
        """Reserve a retry if the budget has room; pair with ``end_retry``."""
        if not self.allows_retry():
            return False
        self.retrying += 1
        return True

    def end_retry(self) -> None:
        self.retrying -= 1
