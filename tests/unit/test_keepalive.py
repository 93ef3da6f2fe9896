"""The keep-alive learnt from quiet spells (``control/keepalive.py``), the decision that
takes its word on the last replica, and the spells the pool records; fake clock."""

from __future__ import annotations

import pytest

from gateway.control.keepalive import MIN_GAPS, KeepAlive, keep_alive
from gateway.control.scaling import Scaler, ScalingRules
from tests.unit.test_pool import make_pool

TICK = 1.0


def spells(low: float, high: float, n: int = 100) -> list[float]:
    return [low + (high - low) * i / (n - 1) for i in range(n)]


@pytest.mark.parametrize(
    ("gaps", "startup_s", "percentile", "window"),
    [
        ([30.0] * (MIN_GAPS - 1), 5.0, 99.0, None),  # too few to say anything
        ([0.2] * 50 + [30.0] * (MIN_GAPS - 1), 5.0, 99.0, None),  # sub-tick ones don't count
        # called every 2-10 s: kept from the start of a spell, through 99 % of them
        # (nearest rank: the 99th of 100 spells, 9.92 s, plus 10 %)
        (spells(2.0, 10.0), 5.0, 99.0, KeepAlive(0.0, 1.1 * (2 + 8 * 98 / 99))),
        # ... through 90 %: fewer replica-seconds, more cold starts
        (spells(2.0, 10.0), 5.0, 90.0, KeepAlive(0.0, 1.1 * (2 + 8 * 89 / 99))),
        # called every 10-20 min, a 30 s start: gone at once, back ahead of the 5th
        # percentile (624 s) less 10 % and a start
        (
            spells(600.0, 1200.0),
            30.0,
            99.0,
            KeepAlive(0.9 * (600 + 600 * 4 / 99) - 30, 1.1 * (600 + 600 * 98 / 99)),
        ),
        # the earliest calls come sooner than a start takes: simply kept
        (spells(10.0, 1200.0), 60.0, 99.0, KeepAlive(0.0, 1.1 * (10 + 1190 * 98 / 99))),
    ],
)
def test_the_windows(
    gaps: list[float], startup_s: float, percentile: float, window: KeepAlive | None
) -> None:
    got = keep_alive(gaps, startup_s, percentile, TICK)
    if window is None:
        assert got is None
    else:
        assert got is not None
        assert (got.prewarm_s, got.keep_s) == pytest.approx((window.prewarm_s, window.keep_s))


@pytest.mark.parametrize(
    ("quiet_s", "warm"),
    [(0.0, False), (509.0, False), (510.0, True), (1000.0, True), (1320, False)],
)
def test_warm_inside_the_window_only(quiet_s: float, warm: bool) -> None:
    assert KeepAlive(510.0, 1320.0).warm(quiet_s) is warm


RULES = ScalingRules(
    min_replicas=0, max_replicas=8, target_concurrency=3.0, stable_window_s=20.0,
    panic_window_s=4.0, panic_threshold=2.0, scale_down_delay_s=5.0,
)  # fmt: skip


def quiet_after(demand: float, scaler_rules: ScalingRules = RULES) -> Scaler:
    """``demand`` for 30 s, then none, sampled every second; quiet from t = 31."""
    scaler = Scaler(scaler_rules, 0.0)
    for t in range(1, 31):
        scaler.record(float(t), demand)
    scaler.record(31.0, 0.0)
    return scaler


@pytest.mark.parametrize(
    ("demand", "ready", "keep", "waiting", "desired", "reason"),
    [
        (2.0, 1, None, 0, 1, "steady"),  # no word: the windows hold it, as always
        (2.0, 1, False, 0, 0, "to_zero"),  # out of its window: the last one goes now
        (2.0, 0, True, 0, 1, "keep_alive"),  # pre-warm: started before the calls come
        (2.0, 1, True, 0, 1, "keep_alive"),
        (8.0, 3, False, 0, 3, "steady"),  # more than the last replica: the usual rules
        (2.0, 1, False, 2, 1, "steady"),  # requests waiting: never
    ],
)
def test_the_decision_takes_its_word_on_the_last_replica(
    demand: float, ready: int, keep: bool | None, waiting: int, desired: int, reason: str
) -> None:
    d = quiet_after(demand).decide(32.0, ready, 0, 0.0, waiting, keep=keep)
    assert (d.desired, d.reason) == (desired, reason)


def test_a_pool_with_a_floor_keeps_it() -> None:
    rules = ScalingRules(1, 8, 3.0, 20.0, 4.0, 2.0, 5.0)
    assert quiet_after(2.0, rules).decide(32.0, 1, 0, keep=False).desired == 1


async def test_the_pool_records_quiet_spells_ended_by_arrivals() -> None:
    pool, _, clock = make_pool(1)
    clock.now = 3.0  # a new pool is quiet from its start
    pool.record_request()
    replica = await pool.acquire()
    assert pool.quiet_since is None and list(pool.gaps) == [3.0]
    clock.now = 3.5
    pool.release(replica, 0.5, 200)
    assert pool.quiet_since == 3.5
    clock.now = 10.5
    pool.record_request()  # a spell of 7 s
    replica = await pool.acquire()
    pool.record_request()  # busy: no spell
    second = await pool.acquire()
    pool.release(replica, 0.1, 200)
    assert pool.quiet_since is None  # one still worked on
    pool.release(second, 0.1, 200)
    assert list(pool.gaps) == [3.0, 7.0] and pool.quiet_since == 10.5  # (no time passed)
