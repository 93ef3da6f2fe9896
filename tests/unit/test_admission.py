"""Deadline-aware admission (``dataplane/admission.py``): the pool's service time, the
expected wait of a request that must queue, and the deadline a request brings."""

from __future__ import annotations

import math

import pytest

from gateway.dataplane.admission import (
    SERVICE_MEMORY,
    ServiceTime,
    deadline_of,
    expected_wait_s,
    retry_after_s,
)
from gateway.dataplane.pool import Tally


def test_no_service_time_before_an_answer() -> None:
    service = ServiceTime(Tally(0, 0, 0.0))
    assert service.update(Tally(40, 0, 3.0)) is None  # 40 arrived, none answered yet
    assert service.update(Tally(40, 40, 4.0)) == pytest.approx(0.1)  # 4 slot-s over 40


def test_a_long_answer_counts_whole_across_updates() -> None:
    """Updates without an answer carry their slot-seconds to the next that has one:
    eight streams of 8 s (one answer a second, 8 slot-seconds a second), answered two
    at a time every other second, are 8 s each, not the 16 s or 0 s of single updates."""
    service = ServiceTime(Tally(0, 0, 0.0))
    service.update(Tally(1, 1, 8.0))
    for i in range(2, 10):
        assert service.update(Tally(i, 2 * (i // 2), 8.0 * i)) == pytest.approx(8.0)


def test_the_service_time_follows_slowly() -> None:
    """A new mean weighs an update's answers against ``SERVICE_MEMORY`` answers."""
    service = ServiceTime(Tally(0, 0, 0.0))
    service.update(Tally(10, 10, 1.0))  # 0.1 s each
    service.update(Tally(26, 26, 1.0 + 16 * 0.3))  # 16 answers of 0.3 s
    weight = 16 / (16 + SERVICE_MEMORY)
    assert service.seconds == pytest.approx(0.1 + weight * 0.2)


def test_each_answer_weighs_once_however_often_it_is_read() -> None:
    service = ServiceTime(Tally(0, 0, 0.0))
    service.update(Tally(10, 10, 1.0))
    for _ in range(5):  # the autoscaler and admission both read it; nothing new came
        assert service.update(Tally(10, 10, 1.0)) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("ahead", "slots", "service_s", "ready_in_s", "wait_s"),
    [
        (0, 4, 0.1, None, 0.025),  # the next of 4 slots to free: a quarter of a service
        (7, 4, 0.1, None, 0.2),  # 8 to be served, 4 at a time: two rounds
        (7, 0, 0.1, None, 0.0),  # no slot known (all draining): no evidence, no refusal
        (7, 4, None, None, 0.0),  # no answer yet: nothing known of the cost
        (0, 0, None, 12.0, 12.0),  # a cold pool: the next replica's readiness
        (3, 0, 0.1, 0.0, 0.0),  # ... overdue: it may be ready any moment
    ],
)
def test_the_expected_wait(
    ahead: int, slots: int, service_s: float | None, ready_in_s: float | None, wait_s: float
) -> None:
    assert expected_wait_s(ahead, slots, service_s, ready_in_s) == pytest.approx(wait_s)


@pytest.mark.parametrize(
    ("wait_s", "deadline_s", "after"), [(2.0, 0.3, 2), (12.0, 2.0, 10), (0.6, 0.5, 1)]
)
def test_retry_after_is_the_excess_over_the_deadline(
    wait_s: float, deadline_s: float, after: int
) -> None:
    assert retry_after_s(wait_s, deadline_s) == after


@pytest.mark.parametrize(
    ("route_s", "header", "deadline_s"),
    [(None, None, None), (2.0, None, 2.0), (2.0, "250", 0.25), (None, " 1500.5 ", 1.5005)],
)
def test_the_deadline_is_the_header_s_else_the_route_s(
    route_s: float | None, header: str | None, deadline_s: float | None
) -> None:
    got = deadline_of(route_s, header)
    assert got == deadline_s if deadline_s is None else math.isclose(got or 0, deadline_s)


@pytest.mark.parametrize("header", ["", "soon", "0", "-5", "nan", "inf", "1e12", "0x10"])
def test_a_bad_deadline_header_is_refused_by_name(header: str) -> None:
    with pytest.raises(ValueError, match="X-Deadline-Ms"):
        deadline_of(2.0, header)
