"""Health state as tables: rise/fall hysteresis and outlier ejection."""

from __future__ import annotations

import pytest

from gateway.dataplane.health import HealthRules, ReplicaHealth

RULES = HealthRules(rise=2, fall=3, consecutive_failures=3, base_ejection_s=10, max_ejection_s=25)


@pytest.mark.parametrize(
    ("probes", "expected_up"),
    [
        ("", True),  # replicas start up
        ("F", True),  # one lost probe changes nothing
        ("FF", True),
        ("FFF", False),  # fall = 3
        ("FFTFF", True),  # a good probe resets the streak
        ("FFFT", False),  # rise = 2
        ("FFFTT", True),
        ("FFFTFT", False),
        ("FFFTTF", True),
    ],
)
def test_rise_and_fall(probes: str, expected_up: bool) -> None:
    h = ReplicaHealth()
    for p in probes:
        h.record_probe(p == "T", RULES)
    assert h.up is expected_up
    assert h.routable(0.0) is expected_up


def test_flip_is_reported_once() -> None:
    h = ReplicaHealth()
    flips = [h.record_probe(False, RULES) for _ in range(5)]
    assert flips == [False, False, True, False, False]


@pytest.mark.parametrize(
    ("outcomes", "ejected"),
    [
        ("FF", False),
        ("FFF", True),  # consecutive_failures = 3
        ("FFTFF", False),  # a success resets the count
        ("FFTFFF", True),
    ],
)
def test_consecutive_failures_eject(outcomes: str, ejected: bool) -> None:
    h = ReplicaHealth()
    for o in outcomes:
        h.record_request(o == "T", 0.0, RULES, may_eject=True)
    assert h.ejected(0.0) is ejected
    assert h.routable(0.0) is not ejected


def test_ejection_grows_with_repeats_and_is_capped() -> None:
    h = ReplicaHealth()
    now = 0.0
    durations = []
    for _ in range(4):
        for _ in range(3):
            h.record_request(False, now, RULES, may_eject=True)
        durations.append(h.ejected_until - now)
        now = h.ejected_until  # back in rotation, fails again
    assert durations == [10, 20, 25, 25]


def test_ejection_ends_by_itself() -> None:
    h = ReplicaHealth()
    for _ in range(3):
        h.record_request(False, 100.0, RULES, may_eject=True)
    assert not h.routable(109.9)
    assert h.routable(110.0)


def test_no_ejection_when_the_pool_forbids_it() -> None:
    h = ReplicaHealth()
    for _ in range(10):
        assert not h.record_request(False, 0.0, RULES, may_eject=False)
    assert h.routable(0.0)


def test_failures_while_ejected_do_not_extend_the_ejection() -> None:
    h = ReplicaHealth()
    for _ in range(3):
        h.record_request(False, 0.0, RULES, may_eject=True)
    for _ in range(6):
        assert not h.record_request(False, 5.0, RULES, may_eject=True)
    assert h.ejected_until == 10.0


def test_coming_back_up_lifts_an_ejection_but_passing_checks_alone_does_not() -> None:
    h = ReplicaHealth()
    for _ in range(3):
        h.record_request(False, 0.0, RULES, may_eject=True)
    h.record_probe(True, RULES)  # checks that pass while it fails requests: still ejected
    assert h.ejected(1.0)
    for _ in range(RULES.fall):
        h.record_probe(False, RULES)
    for _ in range(RULES.rise):
        h.record_probe(True, RULES)  # down, then back: a restarted or recovered replica
    assert h.routable(1.0)


@pytest.mark.parametrize(
    ("heads", "last_head_at", "waited", "unanswered", "hung"),
    [
        # silent for 3x its own p99 and since the attempt was sent, another one
        # unanswered: hung
        ((0.01,) * 32, 0.9, 0.05, 3, True),
        # nothing known of it yet, silent since the attempt was sent, not alone: hung
        ((), float("-inf"), 0.05, 2, True),
        # it answered someone while the attempt waited: working, just a long answer
        ((0.01,) * 32, 0.98, 0.05, 3, False),
        # silent, but not 3x its own p99 yet: a request behind a long answer (one slot)
        ((0.01,) * 31 + (0.05,), 0.9, 0.05, 3, False),
        # the only attempt since its last answer: a long answer and a hang look the same
        ((0.01,) * 32, 0.0, 0.05, 1, False),
        # a slower replica (a smaller GPU) at its usual pace
        ((0.06,) * 32, 0.9, 0.05, 3, False),
    ],
)
def test_an_outrun_attempt_is_a_failure_only_if_the_replica_hung(
    heads: tuple[float, ...], last_head_at: float, waited: float, unanswered: int, hung: bool
) -> None:
    now = 1.0
    h = ReplicaHealth()
    for latency in heads:
        h.record_head(latency, last_head_at)
    assert h.last_head_at == last_head_at
    h.unanswered = unanswered
    assert h.hung(waited, now) == hung
