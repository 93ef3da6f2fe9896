"""The Knative KPA reference of the trace benchmark (``load/bench/kpa.py``): its rules
with their published defaults, on a fake clock (a tick every 2 s)."""

from __future__ import annotations

from load.bench.kpa import PANIC_S, STABLE_S, TICK_S, TO_ZERO_GRACE_S, Kpa


def feed(kpa: Kpa, start: float, until: float, in_system: float, ready: int) -> int:
    desired, t = ready, start
    while t < until:
        desired = kpa.decide(t, in_system, ready, ready)
        t += TICK_S
    return desired


def test_the_stable_window_asks_for_the_average_over_the_target() -> None:
    kpa = Kpa(target=3.0, max_replicas=20)
    assert feed(kpa, 0, STABLE_S, 8.0, 3) == 3  # 8 in the system: ceil(8 / 3)


def test_a_surge_of_twice_the_ready_pods_is_a_panic_that_never_scales_down() -> None:
    kpa = Kpa(target=3.0, max_replicas=20)
    feed(kpa, 0, STABLE_S, 3.0, 1)
    assert feed(kpa, STABLE_S, STABLE_S + PANIC_S, 30.0, 1) == 10  # what queues is demand
    # the surge is over, but the panic holds its highest ask for a stable window
    assert kpa.decide(STABLE_S + PANIC_S + 10, 0.0, 10, 10) == 10
    assert feed(kpa, STABLE_S + PANIC_S + 12, 3 * STABLE_S, 0.0, 10) < 10


def test_scale_down_halves_at_most_per_tick() -> None:
    kpa = Kpa(target=3.0, max_replicas=20)
    feed(kpa, 0, 2 * STABLE_S, 0.1, 8)
    assert kpa.decide(2 * STABLE_S, 0.1, 8, 8) == 4


def test_the_last_pod_goes_after_the_grace_period_and_comes_back_at_once() -> None:
    kpa = Kpa(target=3.0, max_replicas=20)
    feed(kpa, 0, STABLE_S, 1.0, 1)
    t = STABLE_S
    while kpa.decide(t, 0.0, 1, 1) == 1:  # the stable average falls to 0, then the grace
        t += TICK_S
    assert t >= 2 * STABLE_S - TICK_S + TO_ZERO_GRACE_S - TICK_S
    assert kpa.decide(t + 5, 1.0, 0, 0) == 1  # the activator holds a request
