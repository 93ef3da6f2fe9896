"""SLO sizing (``control/sizing.py``): Erlang C, the wait's quantiles, the replicas a
queue-wait target asks for, and the decision that takes them."""

from __future__ import annotations

import math

import pytest

from gateway.control.scaling import Scaler, ScalingRules, Servers
from gateway.control.sizing import erlang_c, replicas_for_wait, wait_quantile_s


def textbook_erlang_c(c: int, a: float) -> float:
    """The closed form, with factorials: fine for small c, as an independent check."""
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


@pytest.mark.parametrize(("c", "a"), [(1, 0.5), (2, 1.0), (4, 3.2), (10, 8.0), (20, 2.0)])
def test_erlang_c_is_the_textbook_s(c: int, a: float) -> None:
    assert erlang_c(c, a) == pytest.approx(textbook_erlang_c(c, a), rel=1e-12)


@pytest.mark.parametrize(
    ("c", "a", "waits"),
    [
        (1, 0.5, 0.5),  # M/M/1: an arrival waits with probability rho
        (2, 1.0, 1 / 3),
        (3, 0.0, 0.0),  # no load, no wait
        (4, 4.0, 1.0),  # saturated: everyone waits
        (4, 9.0, 1.0),
    ],
)
def test_erlang_c_at_the_edges(c: int, a: float, waits: float) -> None:
    assert erlang_c(c, a) == pytest.approx(waits)


def test_erlang_c_for_large_pools_neither_overflows_nor_loses_its_way() -> None:
    waits = erlang_c(2000, 1950.0)  # a! and a**c overflow floats long before this
    assert 0 < waits < 1
    assert erlang_c(2000, 1900.0) < waits  # more headroom, less waiting


@pytest.mark.parametrize(
    ("c", "a", "service_s", "quantile", "wait_s"),
    [
        (1, 0.5, 1.0, 0.99, 2 * math.log(50)),  # 0.5 e^(-0.5 t) = 0.01
        (10, 1.0, 1.0, 0.99, 0.0),  # under 1 % wait at all: the p99 is no wait
        (4, 4.0, 1.0, 0.99, math.inf),  # saturated: the queue grows without bound
        (2, 1.0, 0.1, 0.99, 0.1 * math.log((1 / 3) / 0.01) / 1.0),
    ],
)
def test_the_wait_quantile(
    c: int, a: float, service_s: float, quantile: float, wait_s: float
) -> None:
    assert wait_quantile_s(c, a, service_s, quantile) == pytest.approx(wait_s)


@pytest.mark.parametrize(
    ("load", "service_s", "slots", "wait_s", "replicas"),
    [
        (0.0, 0.1, 4, 0.05, 0),  # no load
        (8.0, 0.1, 4, 10.0, 3),  # 2 replicas are exactly saturated: even a lax target needs 3
        (8.0, 0.1, 4, 0.5, 3),  # 3 wait 66 ms at p99
        (8.0, 2.0, 4, 0.5, 4),  # services 20x as long: so is the wait (1.3 s on 3), 4
        (8.0, 0.1, 4, 0.05, 4),  # a tighter target, more replicas
        (100.0, 0.1, 4, 0.05, 27),  # pooling: 100 Erlangs meet it on 108 slots
        (3.0, 0.1, 1, 0.0001, 9),  # a p99 of ~0: fewer than 1 % may wait at all
        (60.0, 0.1, 1, 0.0001, 40),  # more than the pool may have: the most it may
    ],
)
def test_the_fewest_replicas_that_meet_the_target(
    load: float, service_s: float, slots: int, wait_s: float, replicas: int
) -> None:
    most = 40
    n = replicas_for_wait(load, service_s, slots, wait_s, most)
    assert n == replicas
    if 0 < n < most:  # the fewest: one less misses it
        assert wait_quantile_s(n * slots, load, service_s) <= wait_s
        assert wait_quantile_s((n - 1) * slots, load, service_s) > wait_s


RULES = ScalingRules(
    min_replicas=1, max_replicas=20, target_concurrency=4.0, stable_window_s=60.0,
    panic_window_s=6.0, panic_threshold=2.0, scale_down_delay_s=30.0, queue_wait_p99_s=0.5,
)  # fmt: skip


@pytest.mark.parametrize(
    ("demand", "servers", "desired", "slo"),
    [
        (8.0, None, 2, 0),  # no service time measured yet: the target alone
        (8.0, Servers(2.0, 4), 4, 4),  # 2 s services on 4 slots: 8 Erlangs need 4 for 0.5 s
        (8.0, Servers(0.01, 16), 2, 1),  # short ones on many slots: the target asks more
    ],
)
def test_the_decision_takes_the_larger_of_target_and_slo(
    demand: float, servers: Servers | None, desired: int, slo: int
) -> None:
    scaler = Scaler(RULES, 0.0)
    for t in range(0, 121):
        scaler.record(float(t), demand)
    d = scaler.decide(120.0, 2, 0, servers=servers)
    assert (d.desired, d.slo_replicas) == (desired, slo)


def test_a_bad_slo_is_refused() -> None:
    with pytest.raises(ValueError, match="queue_wait_p99_s"):
        ScalingRules(1, 2, 4.0, 60.0, 6.0, 2.0, 30.0, queue_wait_p99_s=0.0)
