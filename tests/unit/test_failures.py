"""What the reconcile loop remembers of failures (``control.failures``): tables."""

from __future__ import annotations

from gateway.control.failures import Outage, StartFailures, Strays


def test_failed_starts_pause_the_next_one_longer_each_time() -> None:
    f = StartFailures(cap_s=60.0)
    assert [f.failed("exited", now=100.0) for _ in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert f.until == 160.0 and f.count == 7
    f.stayed_up()
    assert f.count == 0 and f.until == 160.0  # the pause under way runs out


def test_a_first_crash_after_ready_is_replaced_at_once() -> None:
    f = StartFailures(cap_s=60.0)
    assert f.failed("crashed", now=0.0) == 0.0  # it may have been killed
    assert f.failed("crashed", now=0.0) == 2.0


def test_the_driver_back_clears_only_the_pause_it_caused() -> None:
    f = StartFailures(cap_s=60.0)
    f.failed("driver", now=0.0)
    f.driver_back()
    assert (f.count, f.until) == (0, 0.0)
    f.failed("startup_timeout", now=0.0)
    f.driver_back()
    assert (f.count, f.until) == (1, 2.0)


def test_an_outage_is_told_once_when_it_begins_and_once_when_it_ends() -> None:
    o = Outage()
    assert o.answered(1.0) is None
    assert [o.failed(t) for t in (10.0, 11.0, 12.0)] == [True, False, False]
    assert o.answered(15.0) == (5.0, 3)
    assert o.answered(16.0) is None


def test_a_stray_is_removed_when_listed_twice_in_a_row_and_logged_once() -> None:
    s = Strays()
    assert s.due({"a", "x"}, known={"a"}) == []  # one listing: maybe a removal finishing
    assert s.due({"a", "x"}, known={"a"}) == [("x", True)]
    assert s.due({"a", "x"}, known={"a"}) == []  # its removal is under way
    s.removed("x")  # ... and failed: still listed
    assert s.due({"a", "x"}, known={"a"}) == [("x", False)]  # again, not logged again
    s.removed("x")
    assert s.due({"a"}, known={"a"}) == []
    assert s.due({"a", "x"}, known={"a"}) == []  # back: a new first listing
    assert s.due({"a", "x"}, known={"a"}) == [("x", True)]
