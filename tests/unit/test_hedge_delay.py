"""The hedge delay: a percentile of recent response-head latencies, with a floor."""

from __future__ import annotations

from gateway.hedging import REFRESH, WINDOW, HedgeDelay


def test_no_delay_until_the_tail_is_known() -> None:
    delay = HedgeDelay(percentile=98.0)
    for _ in range(REFRESH - 1):
        delay.add(0.01)
    assert delay.value is None
    delay.add(0.01)
    assert delay.value == 0.01


def test_the_delay_is_the_percentile_of_recent_heads() -> None:
    delay = HedgeDelay(percentile=98.0)
    for i in range(100):  # 1 ms .. 100 ms, shuffled by a stride coprime to 100
        delay.add((i * 37 % 100 + 1) / 1000)
    for _ in range(REFRESH - 100 % REFRESH):  # up to the next re-sort, with more fast heads
        delay.add(0.001)
    # 128 samples: rank ceil(128 * 0.98) = 126 is the third slowest, 98 ms
    assert delay.value == 0.098


def test_old_heads_leave_the_window() -> None:
    delay = HedgeDelay(percentile=50.0)
    for _ in range(WINDOW):
        delay.add(1.0)
    assert delay.value == 1.0
    for _ in range(WINDOW):
        delay.add(0.002)
    assert delay.value == 0.002


def test_the_floor_holds_and_follows_settings() -> None:
    delay = HedgeDelay(percentile=98.0, min_delay_s=0.005)
    for _ in range(REFRESH):
        delay.add(0.001)
    assert delay.value == 0.005
    delay.min_delay_s = 0.0  # a reload: takes effect at once, without new samples
    assert delay.value == 0.001
