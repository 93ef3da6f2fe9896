"""The hedge delay: a percentile of recent response-head latencies, with floors."""

from __future__ import annotations

import pytest

from gateway.hedging import LATE_OVER_MEDIAN, REFRESH, WINDOW, HedgeDelay


def test_no_delay_until_the_tail_is_known() -> None:
    delay = HedgeDelay(percentile=98.0)
    for _ in range(REFRESH - 1):
        delay.add(0.01)
    assert delay.value is None
    delay.add(0.01)
    assert delay.value is not None


def test_a_long_tail_sets_the_delay_at_the_percentile() -> None:
    delay = HedgeDelay(percentile=98.0)
    tail = [0.1 * (i + 1) for i in range(8)]  # 0.1 .. 0.8 s
    for latency in [0.01] * (2 * REFRESH - len(tail)) + tail:
        delay.add(latency)
    # 128 samples: rank ceil(128 * 0.98) = 126 is the third slowest
    assert delay.value == pytest.approx(0.6)


def test_a_tight_distribution_sets_it_at_twice_the_median() -> None:
    delay = HedgeDelay(percentile=98.0)
    for i in range(REFRESH):  # 10.0 .. 10.63 ms: the p98 is barely above the median
        delay.add(0.010 + i * 0.00001)
    assert delay.value == pytest.approx(LATE_OVER_MEDIAN * (0.010 + REFRESH // 2 * 0.00001))


def test_old_heads_leave_the_window() -> None:
    delay = HedgeDelay(percentile=98.0)
    for _ in range(WINDOW):
        delay.add(1.0)
    assert delay.value == 2.0
    for _ in range(WINDOW):
        delay.add(0.01)
    assert delay.value == 0.02


def test_the_floor_holds_and_follows_settings() -> None:
    delay = HedgeDelay(percentile=98.0, min_delay_s=0.005)
    for _ in range(REFRESH):
        delay.add(0.001)
    assert delay.value == 0.005
    delay.min_delay_s = 0.0  # a reload: takes effect at once, without new samples
    assert delay.value == 0.002
