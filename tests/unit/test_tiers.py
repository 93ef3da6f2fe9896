"""Warm tiers (``control/tiers.py``) and the plan that wakes held replicas first."""

from __future__ import annotations

import pytest

from gateway.control.scaling import ReplicaView, plan
from gateway.control.tiers import Tier, TierRules

BOTH: frozenset[Tier] = frozenset({"paused", "stopped"})  # docker's
ALL: frozenset[Tier] = BOTH | {"asleep"}  # ... with an engine that sleeps


def rules(paused_s: float = 60, stopped_s: float = 600, max_warm: int = 2,
          supported: frozenset[Tier] = BOTH, asleep_s: float = 0) -> TierRules:  # fmt: skip
    return TierRules(paused_s, asleep_s, stopped_s, max_warm, supported)


@pytest.mark.parametrize(
    ("tiers", "held", "first"),
    [
        (rules(), 0, "paused"),  # the warmest first
        (rules(), 1, "paused"),
        (rules(), 2, None),  # max_warm held already: it goes
        (rules(paused_s=0), 0, "stopped"),  # pausing off: straight to stopped
        (rules(supported=frozenset({"stopped"})), 0, "stopped"),  # the driver cannot pause
        (rules(supported=frozenset({"paused"}), paused_s=0), 0, None),  # nothing left
        (rules(max_warm=0), 0, None),
        (rules(paused_s=0, asleep_s=30, supported=ALL), 0, "asleep"),
        (rules(paused_s=0, asleep_s=30), 0, "stopped"),  # said to sleep, but not supported
    ],
)
def test_the_first_tier(tiers: TierRules, held: int, first: Tier | None) -> None:
    assert tiers.first(held) == first


@pytest.mark.parametrize(
    ("tiers", "tier", "in_tier_s", "after"),
    [
        (rules(), "paused", 59.0, "paused"),
        (rules(), "paused", 60.0, "stopped"),  # its time spent: a tier colder
        (rules(), "stopped", 599.0, "stopped"),
        (rules(), "stopped", 600.0, None),  # past the coldest: gone
        (rules(stopped_s=0), "paused", 60.0, None),  # no stopped tier: gone
        (rules(supported=frozenset({"paused"})), "paused", 60.0, None),  # (the process driver)
        (rules(paused_s=0), "paused", 1.0, "stopped"),  # pausing turned off on a reload
        (rules(asleep_s=30, supported=ALL), "paused", 60.0, "asleep"),  # frozen, then asleep
        (rules(asleep_s=30, supported=ALL), "asleep", 29.0, "asleep"),
        (rules(asleep_s=30, supported=ALL), "asleep", 30.0, "stopped"),
    ],
)
def test_down_a_tier_once_its_time_is_spent(
    tiers: TierRules, tier: Tier, in_tier_s: float, after: Tier | None
) -> None:
    assert tiers.after(tier, in_tier_s) == after


def view(rid: str, state: str, inflight: int = 0) -> ReplicaView:
    return ReplicaView(rid, state, inflight, 10.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("desired", "replicas", "start", "wake"),
    [
        (2, [view("a", "ready"), view("s", "stopped"), view("p", "paused")], 0, ("p",)),
        (3, [view("a", "ready"), view("s", "stopped"), view("p", "paused")], 0, ("p", "s")),
        (4, [view("a", "ready"), view("s", "stopped"), view("p", "paused")], 1, ("p", "s")),
        (1, [view("a", "ready"), view("p", "paused")], 0, ()),  # held ones are not live
        (0, [view("p", "paused")], 0, ()),
    ],
)
def test_the_plan_wakes_the_warmest_held_first(
    desired: int, replicas: list[ReplicaView], start: int, wake: tuple[str, ...]
) -> None:
    todo = plan(desired, replicas)
    assert (todo.start, todo.wake, todo.drain) == (start, wake, ())
    assert todo.converged is (start == 0 and not wake)
