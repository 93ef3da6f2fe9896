"""The offered load (``control/demand.py``), from a pool's running totals and a fake clock."""

from __future__ import annotations

import pytest

from gateway.control.demand import OfferedLoad, backlog_left
from gateway.dataplane.admission import ServiceTime
from gateway.dataplane.pool import Tally


def test_no_service_time_before_an_answer() -> None:
    load, service = OfferedLoad(Tally(0, 0, 0.0), 0.0), ServiceTime(Tally(0, 0, 0.0))
    tally = Tally(40, 0, 3.0)  # 40 arrived, none answered yet
    assert load.update(tally, 1.0, service.update(tally)) is None
    assert load.rate == 40.0
    assert load.backlog_concurrency(100, 4.0) == 0.0  # their cost is unknown


@pytest.mark.parametrize(
    ("steps", "rate", "service_s", "offered"),
    [
        # (arrivals, answers, slot-seconds) added per 1 s update
        ([(40, 40, 2.0)], 40.0, 0.05, 2.0),  # Little's law: 40/s x 50 ms = 2 in flight
        ([(40, 40, 2.0), (160, 80, 4.0)], 160.0, 0.05, 8.0),  # a step: what arrives counts,
        # not what the replicas manage to answer (80/s) nor the queue that forms
    ],
)
def test_offered_concurrency(
    steps: list[tuple[int, int, float]], rate: float, service_s: float, offered: float
) -> None:
    load, service = OfferedLoad(Tally(0, 0, 0.0), 0.0), ServiceTime(Tally(0, 0, 0.0))
    arrivals = answers = 0
    busy = 0.0
    result = None
    for i, (a, b, s) in enumerate(steps, 1):
        arrivals, answers, busy = arrivals + a, answers + b, busy + s
        tally = Tally(arrivals, answers, busy)
        result = load.update(tally, float(i), service.update(tally))
    assert load.rate == rate
    assert load.service_s == pytest.approx(service_s)
    assert result == pytest.approx(offered)


def test_no_time_passed_keeps_the_rate() -> None:
    load = OfferedLoad(Tally(0, 0, 0.0), 0.0)
    load.update(Tally(10, 10, 0.5), 1.0, 0.05)
    assert load.update(Tally(12, 12, 0.6), 1.0, 0.05) == pytest.approx(10 * 0.05)


@pytest.mark.parametrize(
    ("queued", "horizon_s", "concurrency"), [(0, 4.0, 0.0), (80, 4.0, 1.0), (80, 2.0, 2.0)]
)
def test_the_backlog_is_served_within_the_horizon(
    queued: int, horizon_s: float, concurrency: float
) -> None:
    load = OfferedLoad(Tally(0, 0, 0.0), 0.0)
    load.update(Tally(20, 20, 1.0), 1.0, 0.05)  # 50 ms each
    assert load.backlog_concurrency(queued, horizon_s) == pytest.approx(concurrency)


@pytest.mark.parametrize(
    ("queued", "demand", "capacity", "arriving", "at_s", "left"),
    [
        # 50 ms services: a slot spare clears 20 requests a second
        (100, 2.0, 4.0, [], 5.0, 0.0),  # 2 slots spare: 40/s clears 100 in 2.5 s
        (100, 2.0, 4.0, [], 2.0, 20.0),  # ... not yet at 2 s
        (100, 4.0, 4.0, [], 5.0, 100.0),  # nothing spare: it stays
        (100, 6.0, 4.0, [], 5.0, 300.0),  # short by 2 slots: it grows by 40/s
        (100, 6.0, 4.0, [(1.0, 4.0)], 5.0, 0.0),  # a replica ready in 1 s: 2 spare after
        (100, 6.0, 4.0, [(4.0, 4.0)], 5.0, 220.0),  # ready in 4 s: 260 by then, 40 cleared
        (100, 6.0, 4.0, [(9.0, 4.0)], 5.0, 300.0),  # ready after the horizon: no credit
        (100, 6.0, 4.0, [(-2.0, 4.0)], 5.0, 0.0),  # overdue: counted as here now
        (0, 6.0, 0.0, [(3.0, 4.0), (1.0, 4.0)], 5.0, 120.0),  # cold: 120 by 1 s, 200 by 3 s
    ],
)
def test_the_start_up_credit(
    queued: int,
    demand: float,
    capacity: float,
    arriving: list[tuple[float, float]],
    at_s: float,
    left: float,
) -> None:
    assert backlog_left(queued, demand, 0.05, capacity, arriving, at_s) == pytest.approx(left)
