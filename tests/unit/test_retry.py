"""The retry budget as a table."""

from __future__ import annotations

import pytest

from gateway.retry import RetryBudget


@pytest.mark.parametrize(
    ("active", "retrying", "allowed"),
    [
        (0, 0, True),  # the floor lets a quiet pool retry
        (1, 2, True),
        (1, 3, False),  # floor of 3 reached
        (100, 19, True),
        (100, 20, False),  # 20 % of 100 requests in flight
        (1000, 199, True),
        (1000, 200, False),
    ],
)
def test_budget(active: int, retrying: int, allowed: bool) -> None:
    budget = RetryBudget(percent=20, min_concurrent=3, active=active, retrying=retrying)
    assert budget.allows_retry() is allowed


def test_reservations_are_counted_until_ended() -> None:
    budget = RetryBudget(percent=0, min_concurrent=2, active=50)
    assert budget.try_start_retry() and budget.try_start_retry()
    assert not budget.try_start_retry()
    budget.end_retry()
    assert budget.try_start_retry()
