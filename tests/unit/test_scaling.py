"""The autoscaler's pure decisions, driven by a fake clock (plain floats, one tick a second)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from gateway.config import Autoscale
from gateway.control.demand import OfferedLoad, backlog_left
from gateway.control.scaling import (
    Decision,
    Plan,
    ReplicaView,
    Scaler,
    ScalingRules,
    plan,
    replicas_for,
)
from gateway.dataplane.admission import ServiceTime
from gateway.dataplane.pool import Tally

RULES = ScalingRules(
    min_replicas=1,
    max_replicas=20,
    target_concurrency=4,
    stable_window_s=60,
    panic_window_s=6,
    panic_threshold=2,
    scale_down_delay_s=30,
)


class Sim:
    """A pool under a load: each tick records a sample, decides, and (``follow``) acts.

    New replicas become ready ``startup_s`` after their start (``math.inf``: never);
    scale-down removes ready replicas at once.
    """

    def __init__(
        self,
        rules: ScalingRules = RULES,
        ready: int = 0,
        now: float = 1000.0,
        startup_s: float = 0.0,
        follow: bool = True,
    ) -> None:
        self.now = now
        self.scaler = Scaler(rules, now)
        self.ready = ready
        self.starts: list[float] = []  # start times of the replicas still starting
        self.startup_s = startup_s
        self.follow = follow
        self.log: list[tuple[float, int, Decision]] = []  # (now, capacity before, decision)

    @property
    def capacity(self) -> int:
        return self.ready + len(self.starts)

    def tick(self, load: float) -> Decision:
        self.now += 1.0
        up = [t for t in self.starts if self.now - t >= self.startup_s]
        self.starts = [t for t in self.starts if self.now - t < self.startup_s]
        self.ready += len(up)
        self.scaler.record(self.now, load)
        capacity = self.capacity
        d = self.scaler.decide(self.now, self.ready, len(self.starts))
        if self.follow:
            if d.desired > self.capacity:
                self.starts += [self.now] * (d.desired - self.capacity)
            elif d.desired < self.capacity:
                self.ready -= min(self.ready, self.capacity - d.desired)
        self.log.append((self.now, capacity, d))
        return d

    def run(self, load: float, seconds: int) -> list[Decision]:
        return [self.tick(load) for _ in range(seconds)]

    def warm(self, load: float, ready: int) -> None:
        """A gateway that has seen ``load`` for long enough: no warming any more."""
        self.ready = ready
        follow, self.follow = self.follow, False
        self.run(
            load, int(self.scaler.rules.stable_window_s + self.scaler.rules.scale_down_delay_s)
        )
        self.follow = follow


def steady_view(n: int) -> list[ReplicaView]:
    return [ReplicaView(f"r{i}", "ready", 1, 100.0) for i in range(n)]


# -- rules ---------------------------------------------------------------------------------


def test_rules_from_config() -> None:
    rules = ScalingRules.from_config(Autoscale())
    assert rules == ScalingRules(1, 8, 4.0, 60.0, 6.0, 2.0, 30.0)


@pytest.mark.parametrize(
    "change",
    [
        {"min_replicas": -1},
        {"min_replicas": 5, "max_replicas": 4},
        {"min_replicas": 0, "max_replicas": 0},
        {"target_concurrency": 0},
        {"panic_window_s": 61},
        {"panic_window_s": 0},
        {"panic_threshold": 0.5},
        {"scale_down_delay_s": -1},
    ],
)
def test_rules_refuse_nonsense(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(RULES, **change)


@pytest.mark.parametrize(
    ("concurrency", "target", "replicas"),
    [
        (0, 4, 0),
        (0.01, 4, 1),
        (4, 4, 1),
        (4.01, 4, 2),
        (32, 4, 8),
        (1.1 * 3, 1.1, 3),
        (0.3, 0.1, 3),
    ],
)
def test_replicas_for(concurrency: float, target: float, replicas: int) -> None:
    assert replicas_for(concurrency, target) == replicas


@pytest.mark.parametrize(("now", "concurrency"), [(999.0, 1.0), (1001.0, -1.0), (1001.0, math.nan)])
def test_record_refuses_bad_samples(now: float, concurrency: float) -> None:
    scaler = Scaler(RULES, 1000.0)
    scaler.record(1000.0, 1.0)
    with pytest.raises(ValueError):
        scaler.record(now, concurrency)


def test_average_is_weighted_by_time() -> None:
    scaler = Scaler(RULES, 0.0)
    scaler.record(1.0, 10.0)  # stands for (0, 1]
    scaler.record(1.1, 10.0)  # an extra tick (an on-demand wake-up): 0.1 s of weight
    scaler.record(1.2, 10.0)
    scaler.record(5.0, 0.0)  # a late tick: 3.8 s of weight
    assert scaler.average(5.0, 60) == pytest.approx(12.0 / 5.0)
    assert scaler.average(5.0, 4) == pytest.approx((0.2 * 10) / 4.0)  # window (1, 5]


# -- steady load ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("load", "target", "replicas"),
    [(8, 4, 2), (10, 4, 3), (4, 4, 1), (3.3000000000000003, 1.1, 3), (70, 4, 18)],
)
def test_steady_load_changes_nothing(load: float, target: float, replicas: int) -> None:
    sim = Sim(replace(RULES, target_concurrency=target), ready=replicas)
    for d in sim.run(load, 200):
        assert (d.desired, d.panic, d.reason) == (replicas, False, "steady")
    assert plan(replicas, steady_view(replicas)).converged


# -- step up: panic ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "ready", "expected", "reason"),
    [
        (8, 32, 2, 8, "scale_up"),  # 4x: followed within the panic window
        (6, 16, 2, 4, "steady"),  # reached before the window's end
        (8, 64, 2, 16, "panic"),  # the first tick asks for over 2x the capacity: panic
        (8, 200, 2, 20, "max"),  # clamped, still panicking
    ],
)
def test_a_step_up_is_followed_within_the_panic_window(
    before: float, after: float, ready: int, expected: int, reason: str
) -> None:
    sim = Sim()
    sim.warm(before, ready)
    decisions = sim.run(after, int(RULES.panic_window_s))
    assert decisions[-1].desired == expected
    assert decisions[-1].panic is (reason in ("panic", "max"))
    assert decisions[-1].reason == reason
    assert all(b.desired >= a.desired for a, b in itertools.pairwise(decisions))


def test_small_rise_scales_up_without_panic() -> None:
    sim = Sim()
    sim.warm(8, 2)
    decisions = sim.run(12, 60)
    assert not any(d.panic for d in decisions)
    assert decisions[-1].desired == 3
    assert "scale_up" in {d.reason for d in decisions}


def test_panic_never_scales_down_and_ends_after_a_stable_window() -> None:
    sim = Sim()
    sim.warm(8, 2)
    sim.run(64, 6)
    assert sim.scaler.panicking and sim.capacity == 16
    for d in sim.run(0, 150):  # the surge vanishes at once
        if d.panic:
            assert (d.desired, d.reason) == (16, "panic")
    # the condition (panic ask >= 2 x capacity) last held early, while capacity was small
    over = [t for t, cap, d in sim.log if d.panic_concurrency / 4 >= 2 * cap]
    panic_until = max(t for t, _, d in sim.log if d.panic)
    assert panic_until == max(over) + RULES.stable_window_s - 1
    after = [(t, d) for t, _, d in sim.log if t > panic_until]
    # out of panic, the delay window still holds the panic's recommendation ...
    held = [d for t, d in after if t < panic_until + RULES.scale_down_delay_s]
    assert len(held) == RULES.scale_down_delay_s - 1
    assert all((d.desired, d.reason) == (16, "delay") for d in held)
    # ... then the pool goes down to the floor, as the stable window lets go of the surge
    down = [d.desired for _, d in after[len(held) :]]
    assert down == sorted(down, reverse=True) and down[0] < 16
    assert sim.log[-1][2].desired == 1


def test_panic_high_water_survives_capacity_loss() -> None:
    """A replica that dies during a panic is replaced: desired stays at the high-water mark."""
    scaler = Scaler(RULES, 0.0)
    for t in range(1, 7):
        scaler.record(float(t), 32.0)
    assert scaler.decide(6.0, 2, 0).desired == 8
    scaler.record(7.0, 8.0)
    d = scaler.decide(7.0, 5, 0)  # three of eight were lost
    assert (d.desired, d.panic) == (8, True)


# -- step down: the delay ------------------------------------------------------------------


def test_step_down_waits_for_the_delay() -> None:
    sim = Sim()
    sim.warm(32, 8)
    decisions = sim.run(4, 200)
    first_down = next(i for i, d in enumerate(decisions) if d.desired < 8)
    assert first_down >= RULES.scale_down_delay_s
    assert all(d.reason in ("steady", "delay") for d in decisions[:first_down])
    assert decisions[first_down].reason == "scale_down"
    assert not any(d.panic for d in decisions)
    # the stable window must forget the old load, then the delay window the old advice
    # (decisions[i] is the tick at i + 1 s: the 60th holds only the new load, and 30
    # ticks of "1" later the old advice has left the delay window)
    at = int(RULES.stable_window_s + RULES.scale_down_delay_s) - 1
    assert decisions[at - 1].desired == 1 and decisions[at - 2].desired > 1
    assert all(d.desired == 1 for d in decisions[at:])
    desired = [d.desired for d in decisions]
    assert desired == sorted(desired, reverse=True)  # monotone on the way down


@pytest.mark.parametrize("dip_s", [1, 5, 15])
def test_a_brief_dip_changes_nothing(dip_s: int) -> None:
    rules = replace(RULES, stable_window_s=10, panic_window_s=2, scale_down_delay_s=30)
    sim = Sim(rules)
    sim.warm(32, 8)
    decisions = sim.run(0, dip_s) + sim.run(32, 60)
    assert {d.desired for d in decisions} == {8}


def test_no_delay_scales_down_with_the_stable_average() -> None:
    sim = Sim(replace(RULES, scale_down_delay_s=0))
    sim.warm(32, 8)
    decisions = sim.run(4, 61)
    assert decisions[9].desired == 7  # the 60 s average of 51 x 32 + 9 x 4 asks for 7
    assert decisions[-1].desired == 1


# -- slow starts ---------------------------------------------------------------------------


@pytest.mark.parametrize("startup_s", [math.inf, 30.0, 90.0])
@pytest.mark.parametrize(("load", "ready", "expected"), [(32, 2, 8), (40, 1, 10), (12, 1, 3)])
def test_starting_replicas_count_as_capacity(
    startup_s: float, load: float, ready: int, expected: int
) -> None:
    sim = Sim(startup_s=startup_s)
    sim.warm(4 * ready, ready)
    decisions = sim.run(load, 300)
    assert max(d.desired for d in decisions) == expected
    assert decisions[-1].desired == expected
    assert sim.capacity == expected


def test_starting_replicas_end_the_panic() -> None:
    """Two ready replicas and 14 that never finish starting: the panic asked for 16,
    and 16 are coming, so the condition stops holding and the panic ends a stable
    window later; had only ready replicas counted, it would go on panicking."""
    sim = Sim(startup_s=math.inf)
    sim.warm(8, 2)
    decisions = sim.run(64, 200)
    assert decisions[5].panic and not decisions[-1].panic
    assert (sim.ready, sim.capacity, decisions[-1].reason) == (2, 16, "steady")
    ready_only = sim.scaler.decide(sim.now, sim.ready, 0)
    assert (ready_only.desired, ready_only.panic) == (16, True)


# -- the backlog: a term of its own, never demand ---------------------------------------------

BENCH = ScalingRules(  # load/burst.py's settings
    min_replicas=1,
    max_replicas=8,
    target_concurrency=3,
    stable_window_s=20,
    panic_window_s=4,
    panic_threshold=2,
    scale_down_delay_s=5,
)


@dataclass
class Tick:
    t: float
    inflight: float
    queued: float
    ready: int  # after this tick's readiness, as ``decide`` saw it
    starting: int
    d: Decision


class FluidPool:
    """A pool as a deterministic fluid queue under a fake clock, closing the loop as the
    reconcile loop does: the pool's totals go through ``demand.OfferedLoad``, its service
    time through ``admission.ServiceTime``.

    Requests arrive at ``rate(t)`` per second and take ``service_s`` on one of ``slots``
    per ready replica; when all slots are busy they wait in the gateway's queue. The loop
    ticks every ``tick_s``, and also at the moment a replica becomes ready (the reconcile
    loop's wake-up); a replica started by a decision is ready ``startup_s`` later, surplus
    ones go at once. The defaults are load/burst.py's sim replicas: 50 ms, 4 slots.
    """

    def __init__(
        self,
        rules: ScalingRules,
        rate: Callable[[float], float],
        startup_s: float = 0.7,
        service_s: float = 0.05,
        slots: int = 4,
        tick_s: float = 0.5,
        start: float = -60.0,  # a history long enough to be past warming at 0
        ready: int | None = None,
    ) -> None:
        self.rules, self.rate, self.startup_s = rules, rate, startup_s
        self.service_s, self.slots, self.tick_s = service_s, slots, tick_s
        self.now = start
        self.scaler = Scaler(rules, start)
        self.ready = max(1, rules.min_replicas) if ready is None else ready
        self.starts: list[float] = []  # when each starting replica will be ready
        self.queued = 0.0
        self.arrivals = self.answers = self.busy_s = 0.0  # the pool's totals, as fluids
        self.load = OfferedLoad(self.tally, start)
        self.service = ServiceTime(self.tally)
        self.log: list[Tick] = []

    @property
    def tally(self) -> Tally:
        return Tally(round(self.arrivals), round(self.answers), self.busy_s)

    def backlog(self, t: float) -> tuple[float, float]:
        """As the reconcile loop's: the queue, and what is left of it when a replica
        started now would be ready, starting ones arriving on time (``backlog_left``)."""
        service_s = self.load.service_s
        if service_s is None:
            return 0.0, 0.0
        demand = self.scaler.average(t, self.rules.panic_window_s)
        arriving = [(s - t, float(self.slots)) for s in self.starts]
        left = backlog_left(
            self.queued, demand, service_s, self.ready * self.slots, arriving, self.startup_s
        )
        horizon_s = max(self.rules.panic_window_s, self.startup_s)
        return (
            self.load.backlog_concurrency(self.queued, horizon_s),
            self.load.backlog_concurrency(left, horizon_s),
        )

    def run(self, until: float) -> list[Tick]:
        next_tick = self.now + self.tick_s
        inflight = 0.0
        while self.now < until:
            t = min([next_tick, *self.starts])
            rate, span = self.rate(self.now), t - self.now
            served = self.ready * self.slots / self.service_s
            self.queued = max(0.0, self.queued + (rate - served) * span)
            busy = self.ready * self.slots
            inflight = busy if self.queued > 0 else min(busy, rate * self.service_s)
            self.arrivals += rate * span
            self.answers += inflight / self.service_s * span
            self.busy_s += inflight * span
            self.now = t
            self.ready += sum(1 for s in self.starts if s <= t)
            self.starts = [s for s in self.starts if s > t]
            tally = self.tally
            offered = self.load.update(tally, t, self.service.update(tally))
            self.scaler.record(t, inflight if offered is None else offered)
            backlog, at_ready = self.backlog(t)
            d = self.scaler.decide(
                t, self.ready, len(self.starts), backlog, round(self.queued), None, at_ready
            )
            self.log.append(Tick(t, inflight, self.queued, self.ready, len(self.starts), d))
            live = self.ready + len(self.starts)
            self.starts += [t + self.startup_s] * max(0, d.desired - live)
            self.ready -= min(self.ready, max(0, live - d.desired))
            if t >= next_tick:
                next_tick += self.tick_s
        return self.log


@pytest.mark.parametrize("startup_s", [0.7, 2.0, 5.0, 30.0])
@pytest.mark.parametrize("offset", [0.0, 0.1, 0.25, 0.4])  # the step's phase against the ticks
def test_a_burst_backlog_is_not_demand(startup_s: float, offset: float) -> None:
    """load/burst.py in pure form: 40 rps (2 in flight) -> 160 rps (8 in flight: 3
    replicas at target 3) for 30 s -> 40 rps. While the first new replicas start, the
    queue grows by 80 a second; Knative (and this scaler, when in-flight + queued was its
    signal) asked for the maximum, 8. The offered load asks for 3, the backlog one more."""
    step, end = 20.0 + offset, 50.0 + offset
    log = FluidPool(BENCH, lambda t: 160.0 if step <= t < end else 40.0, startup_s).run(120)
    burst = [k for k in log if step <= k.t < end]
    assert max(k.d.desired for k in log) <= 4  # needed + 1
    assert max(k.queued for k in burst) > 80  # there was a backlog worth 27+ replicas
    first = next(k for k in burst if k.d.desired > 1)
    assert first.t - step <= 1.5  # noticed within three ticks
    # the panic window's demand reaches the need within one window: never short after
    assert all(k.d.desired >= 3 for k in burst if k.t >= step + BENCH.panic_window_s)
    drained = next(k.t for k in log if k.t > first.t and k.queued == 0)
    assert drained - step <= 2 * startup_s + BENCH.panic_window_s
    assert all(k.queued == 0 for k in log if k.t > drained)
    # after the burst, down to 1 as usual
    assert log[-1].d.desired == 1 and log[-1].ready == 1


@pytest.mark.parametrize("startup_s", [0.7, 2.0, 5.0])
def test_from_zero_asks_for_what_the_offered_load_needs(startup_s: float) -> None:
    """load.bench from-zero in pure form: an empty pool, then 80 rps (4 in flight: 2
    replicas at target 3). The first replica starts at once; the requests that queue
    for it are no demand, so 2 are asked for, 3 at most while they come."""
    rules = replace(BENCH, min_replicas=0)
    pool = FluidPool(rules, lambda t: 80.0 if t >= 20 else 0.0, startup_s, ready=0)
    log = pool.run(60)
    assert all(k.d.desired == 0 for k in log if k.t < 20)
    assert next(k for k in log if k.t > 20).d.desired == 1  # at the first tick
    assert max(k.d.desired for k in log) <= 3
    assert {k.d.desired for k in log if k.t >= 20 + 2 * startup_s + 10} == {2}


@pytest.mark.parametrize(
    ("rate", "startup_s", "within_s"),
    [
        (800.0, 0.7, 2.0),  # 40 in flight: 14 replicas' worth, in half a panic window
        (800.0, 15.0, 2.0),
        (480.0, 0.7, 4.0),  # 24 in flight: exactly 8 replicas' worth, in a panic window
    ],
)
def test_a_sustained_overload_still_scales_to_max(
    rate: float, startup_s: float, within_s: float
) -> None:
    log = FluidPool(BENCH, lambda t: rate if t >= 20 else 40.0, startup_s).run(80)
    at_max = next(k.t for k in log if k.d.desired == 8)
    assert at_max - 20 <= within_s
    assert all(k.d.desired == 8 for k in log if k.t >= at_max)


def test_a_ramp_is_followed_up_to_max() -> None:
    """Load that keeps rising (+1 in flight a second, 3 s a replica): the panic follows
    it, a replica or two ahead with the backlog, to the maximum."""
    log = FluidPool(BENCH, lambda t: 40.0 + max(0.0, t - 20) * 20, 0.7).run(60)
    first = next(k.t for k in log if k.d.desired > 1)
    at_max = next(k.t for k in log if k.d.desired == 8)
    assert at_max <= 44  # 24 in flight (8 replicas' worth) at t = 42
    span = [k for k in log if first <= k.t <= at_max]
    desired = [k.d.desired for k in span]
    assert desired == sorted(desired)
    assert all(k.d.desired >= min(replicas_for(2 + k.t - 20, 3), 8) - 2 for k in span)
    assert all(k.d.desired == 8 for k in log if k.t >= at_max)


def steady_scaler(demand: float = 2.0, ready: int = 1) -> Scaler:
    """20 s of ``demand`` on ``ready`` replicas, sampled every 0.5 s."""
    scaler = Scaler(BENCH, 0.0)
    for t in range(1, 41):
        scaler.record(t * 0.5, demand)
        scaler.decide(t * 0.5, ready, 0)
    return scaler


@pytest.mark.parametrize(
    ("ready", "starting", "backlog", "desired"),
    [
        (3, 0, 0.0, 3),  # 8 offered: 3 replicas at target 3
        (3, 0, 1.0, 3),  # 9: still 3
        (3, 0, 4.0, 4),  # 12: one more to drain the queue in time
        (3, 0, 10.0, 4),  # 18: still one more, at most
        (2, 1, 10.0, 4),
        (1, 3, 10.0, 4),
    ],
)
def test_the_backlog_adds_to_the_ask(
    ready: int, starting: int, backlog: float, desired: int
) -> None:
    scaler = steady_scaler(8.0, 3)
    d = scaler.decide(20.5, ready, starting, backlog, 10)
    assert d.desired == desired
    assert d.stable_concurrency == pytest.approx(8.0)  # and the history holds none of it


@pytest.mark.parametrize(
    ("ready", "starting", "at_ready", "desired"),
    [
        (3, 0, 4.0, 4),  # still queued when a new replica would be ready: it starts
        (3, 0, 0.0, 3),  # cleared by then: no start for it
        (4, 0, 0.0, 4),  # ... but the replicas in place stay while it drains
        (3, 1, 0.0, 4),  # ... the one starting too
    ],
)
def test_a_start_is_asked_for_only_if_the_queue_outlasts_it(
    ready: int, starting: int, at_ready: float, desired: int
) -> None:
    """The start-up credit: 8 offered (3 replicas at target 3), a backlog worth 4 more."""
    d = steady_scaler(8.0, 3).decide(20.5, ready, starting, 4.0, 10, None, at_ready)
    assert d.desired == desired


def test_a_waiting_request_keeps_a_replica() -> None:
    """No demand measured (nothing answered yet, say), but requests wait: the pool that
    would scale to zero keeps, or gets, one replica."""
    rules = replace(BENCH, min_replicas=0)
    scaler = Scaler(rules, 0.0)
    for t in range(1, 61):
        scaler.record(float(t), 0.0)
        assert scaler.decide(float(t), 1, 0, 0.0, 5).desired == 1
    later = 61.0 + rules.scale_down_delay_s
    assert scaler.decide(later, 1, 0).desired == 0  # nothing waited for a delay: zero
    d = scaler.decide(later + 1, 0, 0, 0.0, 1)
    assert (d.desired, d.reason) == (1, "from_zero")


# -- clamps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_r", "max_r", "load", "ready", "desired", "reason"),
    [
        (2, 8, 0, 2, 2, "min"),
        (2, 8, 4, 2, 2, "min"),
        (3, 8, 0, 0, 3, "min"),  # an empty pool with a floor: started, no demand needed
        (1, 5, 100, 5, 5, "max"),
        (1, 3, 32, 8, 3, "max"),  # after a reload lowered the ceiling
        (1, 8, 20, 5, 5, "steady"),
    ],
)
def test_clamps(min_r: int, max_r: int, load: float, ready: int, desired: int, reason: str) -> None:
    sim = Sim(replace(RULES, min_replicas=min_r, max_replicas=max_r), follow=False)
    sim.warm(load, ready)
    d = sim.tick(load)
    assert (d.desired, d.reason) == (desired, reason)


def test_reload_keeps_history() -> None:
    sim = Sim()
    sim.warm(32, 8)
    sim.scaler.rules = replace(RULES, target_concurrency=8)
    d = sim.tick(32)
    assert d.stable_concurrency == pytest.approx(32)  # no refill of the window
    assert (d.desired, d.reason) == (8, "delay")  # and no immediate drop either
    assert sim.run(32, 31)[-1].desired == 4


# -- zero ----------------------------------------------------------------------------------


def test_scale_to_zero_only_after_the_delay() -> None:
    sim = Sim(replace(RULES, min_replicas=0))
    sim.warm(1, 1)
    last_demand = sim.now
    decisions = sim.run(0, 200)
    zero_at = next(t for t, _, d in sim.log if d.desired == 0)
    # the stable average is 0 from one window after the last demand on (+60 s), and 30
    # ticks recommending 0 (+60 s ... +89 s) fill the delay window
    assert zero_at - last_demand == RULES.stable_window_s + RULES.scale_down_delay_s - 1
    first = next(d for d in decisions if d.desired == 0)
    assert first.reason == "to_zero" and first.stable_concurrency == 0
    assert decisions[-1].desired == 0 and decisions[-1].reason == "steady"


def test_no_scale_to_zero_while_demand_trickles() -> None:
    sim = Sim(replace(RULES, min_replicas=0))
    sim.warm(1, 1)
    for _ in range(5):
        assert {d.desired for d in sim.run(0, 50) + sim.run(1, 1)} == {1}


@pytest.mark.parametrize(
    ("idle_s", "load", "desired"),
    [
        (0, 1, 1),  # at gateway start: the history is just this sample
        (0, 32, 8),
        (500, 1, 1),  # after long idleness: the windows are mostly zeros, still >= 1 now
        (500, 32, 2),  # the panic window's share of the demand
        (500, 0.001, 1),
    ],
)
def test_scale_from_zero_at_the_first_sample(idle_s: int, load: float, desired: int) -> None:
    sim = Sim(replace(RULES, min_replicas=0), startup_s=math.inf)
    sim.run(0, idle_s)
    assert sim.capacity == 0
    d = sim.tick(load)
    assert (d.desired, d.reason) == (desired, "from_zero")
    # while the first replicas start and requests wait, nothing goes back to zero
    assert min(d.desired for d in sim.run(load, 120)) >= desired


def test_from_zero_even_when_the_sample_has_no_weight_yet() -> None:
    scaler = Scaler(replace(RULES, min_replicas=0), 0.0)
    scaler.record(0.0, 3.0)  # recorded at the very instant the history starts
    d = scaler.decide(0.0, 0, 0)
    assert (d.desired, d.reason) == (1, "from_zero")


# -- restart -------------------------------------------------------------------------------


@pytest.mark.parametrize(("stable_s", "delay_s"), [(60, 30), (60, 0), (30, 90)])
def test_restart_with_empty_history_holds_the_adopted_replicas(stable_s: int, delay_s: int) -> None:
    rules = replace(RULES, stable_window_s=stable_s, panic_window_s=6, scale_down_delay_s=delay_s)
    sim = Sim(rules, ready=5)  # a restarted gateway adopted five replicas
    decisions = sim.run(1, 200)
    hold = max(stable_s, delay_s)
    assert all((d.desired, d.reason) == (5, "warming") for d in decisions[: hold - 1])
    assert (decisions[hold - 1].desired, decisions[hold - 1].reason) == (1, "scale_down")


@pytest.mark.parametrize(("load", "desired", "reason"), [(30, 8, "scale_up"), (60, 15, "panic")])
def test_restart_still_scales_up_while_warming(load: float, desired: int, reason: str) -> None:
    sim = Sim(ready=5)
    d = sim.tick(load)
    assert (d.desired, d.reason) == (desired, reason)


def test_a_stalled_history_is_no_evidence_either() -> None:
    """No sample in the stable window (the sampler stalled): hold, never scale down."""
    scaler = Scaler(RULES, 0.0)
    scaler.record(1.0, 1.0)
    d = scaler.decide(500.0, 5, 0)
    assert (d.desired, d.reason) == (5, "warming")


# -- invariants under a random load --------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_invariants_under_a_random_walk(seed: int) -> None:
    rng = random.Random(seed)
    rules = replace(RULES, min_replicas=rng.choice([0, 1, 2]), max_replicas=12)
    sim = Sim(rules, ready=3, startup_s=rng.choice([0.0, 5.0, 40.0]))
    load = 10.0
    for _ in range(600):
        load = max(0.0, load + rng.choice([-1, 1]) * rng.random() * 8 + (rng.random() < 0.02) * 40)
        capacity = sim.capacity
        d = sim.tick(load)
        assert rules.min_replicas <= d.desired <= rules.max_replicas
        if d.panic:
            assert d.desired >= min(capacity, rules.max_replicas)
        if sim.now - 1000.0 < rules.stable_window_s:
            assert d.desired >= min(capacity, rules.max_replicas)


# -- plan ----------------------------------------------------------------------------------


def ready(rid: str, inflight: int = 0, age_s: float = 100.0) -> ReplicaView:
    return ReplicaView(rid, "ready", inflight, age_s)


def starting(rid: str) -> ReplicaView:
    return ReplicaView(rid, "starting", 0, 1.0)


def failed(rid: str) -> ReplicaView:
    return ReplicaView(rid, "failed", 0, 50.0)


def draining(rid: str) -> ReplicaView:
    return ReplicaView(rid, "draining", 1, 50.0)


@pytest.mark.parametrize(
    ("desired", "replicas", "expected"),
    [
        (2, [ready("a"), ready("b")], Plan(0, (), ())),
        (4, [ready("a"), ready("b")], Plan(2, (), ())),
        (2, [ready("a"), starting("b")], Plan(0, (), ())),
        (3, [ready("a"), starting("b")], Plan(1, (), ())),
        # scale-down: the idle ones first, then the youngest; never a starting one
        (1, [ready("a", 3), ready("b"), ready("c", age_s=5)], Plan(0, ("c", "b"), ())),
        (2, [ready("a", 3), ready("b", 1), ready("c", 2)], Plan(0, ("b",), ())),
        (1, [ready("a", 2), ready("b", 2, 9), ready("c", 2, 20)], Plan(0, ("b", "c"), ())),
        (0, [ready("a"), ready("b")], Plan(0, ("a", "b"), ())),
        (0, [starting("a"), ready("b", 9), starting("c")], Plan(0, ("b",), ())),
        # never fewer ready ones than desired, for starting ones that may yet fail
        (1, [starting("a"), ready("b", 9), starting("c")], Plan(0, (), ())),
        (2, [ready("a"), ready("b"), starting("c"), starting("d")], Plan(0, (), ())),
        (2, [ready("a"), ready("b"), ready("c"), starting("d")], Plan(0, ("a",), ())),
        # failed: removed and replaced; draining ones count for nothing
        (2, [ready("a"), failed("b")], Plan(1, (), ("b",))),
        (2, [failed("a"), failed("b")], Plan(2, (), ("a", "b"))),
        (1, [ready("a"), ready("b"), failed("c")], Plan(0, ("a",), ("c",))),
        (2, [ready("a"), draining("b"), draining("c")], Plan(1, (), ())),
        (1, [ready("a"), draining("b")], Plan(0, (), ())),
        (0, [], Plan(0, (), ())),
        (3, [], Plan(3, (), ())),
    ],
)
def test_plan(desired: int, replicas: list[ReplicaView], expected: Plan) -> None:
    assert plan(desired, replicas) == expected


@pytest.mark.parametrize(
    ("p", "converged"),
    [
        (Plan(0, (), ()), True),
        (Plan(1, (), ()), False),
        (Plan(0, ("a",), ()), False),
        (Plan(0, (), ("a",)), False),
    ],
)
def test_converged(p: Plan, converged: bool) -> None:
    assert p.converged is converged


def test_plan_refuses_negative() -> None:
    with pytest.raises(ValueError):
        plan(-1, [])
