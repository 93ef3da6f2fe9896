"""The pause before the next try after failures in a row (``control.backoff``): a table."""

from __future__ import annotations

import pytest

from gateway.control.backoff import backoff


@pytest.mark.parametrize(
    ("failures", "first_s", "cap_s", "wait_s"),
    [
        (0, 2.0, 60.0, 0.0),  # none failed (or a replica was ready since): start at once
        (-1, 2.0, 60.0, 0.0),
        (1, 2.0, 60.0, 2.0),  # the first failure waits first_s
        (2, 2.0, 60.0, 4.0),  # then doubles with each one
        (3, 2.0, 60.0, 8.0),
        (4, 2.0, 60.0, 16.0),
        (5, 2.0, 60.0, 32.0),
        (6, 2.0, 60.0, 60.0),  # 64 > the cap
        (7, 2.0, 60.0, 60.0),  # and stays there
        (10_000, 2.0, 60.0, 60.0),  # however many (no float overflow)
        (1, 2.0, 4.0, 2.0),  # a low cap, as test_chaos uses: 2, 4, 4, 4 ...
        (2, 2.0, 4.0, 4.0),
        (3, 2.0, 4.0, 4.0),
        (1, 0.5, 10.0, 0.5),  # another first step
        (4, 0.5, 10.0, 4.0),
        (5, 0.5, 10.0, 8.0),
        (6, 0.5, 10.0, 10.0),
        (1, 5.0, 3.0, 3.0),  # the cap wins over the first step too
    ],
)
def test_backoff(failures: int, first_s: float, cap_s: float, wait_s: float) -> None:
    assert backoff(failures, first_s, cap_s) == wait_s


def test_the_defaults_double_from_2_s_up_to_a_minute() -> None:
    assert [backoff(n) for n in range(8)] == [0, 2, 4, 8, 16, 32, 60, 60]


def test_the_waits_never_shrink_as_failures_grow() -> None:
    waits = [backoff(n, 0.3, 45.0) for n in range(200)]
    assert waits == sorted(waits) and waits[-1] == 45.0
