"""The retry budget: a ratio of recent requests plus a per-second reserve."""

from __future__ import annotations

import pytest

from gateway.dataplane.retry import WINDOW_S, RetryBudget
from tests.fakes import Clock


def spend(budget: RetryBudget, tries: int) -> int:
    return sum(budget.try_retry() for _ in range(tries))


@pytest.mark.parametrize(
    ("requests", "percent", "min_per_s", "allowed"),
    [
        (0, 20, 1, WINDOW_S),  # the reserve alone
        (100, 20, 0, 20),  # 20 % of the requests
        (1000, 20, 0, 200),
        (1000, 20, 1, 200 + WINDOW_S),
        (1000, 0, 0, 0),
    ],
)
def test_allowance(requests: int, percent: float, min_per_s: float, allowed: int) -> None:
    budget = RetryBudget(Clock(1000.0), percent=percent, min_per_s=min_per_s)
    for _ in range(requests):
        budget.record_request()
    assert spend(budget, 10_000) == allowed


def test_the_window_slides() -> None:
    clock = Clock(1000.0)
    budget = RetryBudget(clock, percent=50, min_per_s=0)
    for _ in range(10):
        budget.record_request()
    assert spend(budget, 100) == 5
    clock.now += WINDOW_S - 1
    assert spend(budget, 100) == 0  # still inside the window: spent
    clock.now += 1
    assert not budget.allows_retry()  # the requests that paid for retries left the window
    for _ in range(4):
        budget.record_request()
    assert spend(budget, 100) == 2
