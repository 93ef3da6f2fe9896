"""The scenarios: the replicas, the load, and what happens to the replicas mid-run.

Every contestant of a scenario meets the same thing: fresh replicas with the same
settings, the same arrival times (one seed) and the same actions at the same moments.
Wherever one replica is odd (slow, failing, hung, killed, slowed down) it is ``r0``, so its
share of the answers is the figure to watch.

The sizes are for a 2-core machine shared by the load generator, the replicas and the
contestant: rates stay well below what saturates the CPU, except that ``overload``
saturates the replicas' slots (not the CPU). Sim replicas serve ``slots`` requests at once
for ``service_ms`` each (constant here; ``matrix`` draws it from other distributions); the
rest wait inside them, first come first served.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from load.bench.contestants import CONTESTANTS, Contestant, Limits
from load.burst import REPLICA, Plan, step_plan


@dataclass(frozen=True)
class Replica:
    """One sim replica's settings (``python -m backends.sim`` flags)."""

    service_ms: float = 10.0  # the mean
    slots: int = 4
    fail_rate: float = 0.0  # share of requests answered at once with a 500
    distribution: str = "const"  # of the service times (backends.sim.server.DISTRIBUTIONS)
    sigma: float = 0.5  # lognormal shape
    slowdown: float = 1.0  # multiplies every service time


@dataclass(frozen=True)
class Action:
    """Something done to replica ``replica`` at ``at`` x the run's duration: ``stop`` it
    (SIGSTOP, a hang or a lost host: the kernel still accepts connections, nothing is
    answered, ``/health`` included), ``kill`` it (SIGKILL, a crash; a stopped one too),
    ``restart`` it, or change its settings through ``/control``."""

    at: float
    replica: int
    do: Literal["stop", "kill", "restart", "control"]
    changes: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> str:
        if self.do != "control":
            return f"{self.do} r{self.replica}"
        return f"r{self.replica} " + ", ".join(f"{key} {value}" for key, value in self.changes)


Target = Literal["throughput", "p99", "errors"]


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    replicas: tuple[Replica, ...]
    rate: float  # arrivals per second
    limits: Limits
    client_timeout_s: float | None = None  # the load generator's, per request (None: --timeout)
    actions: tuple[Action, ...] = ()
    phases: tuple[str, ...] = ()  # names of the stretches the actions cut the run into
    direct: bool = False  # a run with no proxy (the client spreads requests round robin)
    watch: bool = True  # r0 is the odd replica: report its share
    target: Target | None = None  # what the gateway with peak_ewma must show (report.py)

    def contestants(self) -> list[Contestant]:
        return [c for c in CONTESTANTS if self.direct or c.kind != "direct"]


FAST = Replica(service_ms=10, slots=4)
LIMITS = Limits(max_inflight=FAST.slots)  # the proxy's cap = the replica's slots

SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "overhead",
            "4 fast replicas (1 ms, 64 slots): what each proxy adds to latency, and its CPU "
            "per request (throughput on one core)",
            replicas=(Replica(service_ms=1, slots=64),) * 4,
            rate=1000,
            limits=Limits(max_inflight=64),
            direct=True,
            watch=False,
            target="throughput",
        ),
        Scenario(
            "hetero",
            "4 replicas, r0 5x slower (50 ms against 10 ms, 4 slots each)",
            replicas=(Replica(service_ms=50, slots=4), FAST, FAST, FAST),
            rate=400,
            limits=LIMITS,
            target="p99",
        ),
        Scenario(
            "fastfail",
            "4 replicas of 10 ms; r0 answers every request at once with a 500 (and its "
            "/health stays 200)",
            replicas=(Replica(service_ms=10, slots=4, fail_rate=1.0), FAST, FAST, FAST),
            rate=300,
            limits=LIMITS,
            target="errors",
        ),
        Scenario(
            "failover",
            "4 replicas of 10 ms; r0 hangs at 25 % of the run (SIGSTOP: connections accepted, "
            "nothing answered, /health included), is killed (SIGKILL) at 50 % and restarted "
            "at 75 %; clients give up after 2 s, the response timeout every proxy is given",
            replicas=(FAST,) * 4,
            rate=300,
            limits=Limits(max_inflight=FAST.slots, response_s=2.0),
            client_timeout_s=2.0,
            actions=(Action(0.25, 0, "stop"), Action(0.5, 0, "kill"), Action(0.75, 0, "restart")),
            phases=("before", "r0 hung", "r0 dead", "r0 restarted"),
            target="errors",
        ),
        Scenario(
            "degrade",
            "4 replicas of 10 ms; r0 slows down 5x at 30 % of the run and recovers at 70 %",
            replicas=(FAST,) * 4,
            rate=400,
            limits=LIMITS,
            actions=(
                Action(0.3, 0, "control", (("slowdown", 5.0),)),
                Action(0.7, 0, "control", (("slowdown", 1.0),)),
            ),
            phases=("before", "r0 slow", "r0 recovered"),
        ),
        Scenario(
            "overload",
            "4 replicas of 40 ms with 4 slots (400 rps in all) offered 600 rps",
            replicas=(Replica(service_ms=40, slots=4),) * 4,
            rate=600,
            limits=LIMITS,
            watch=False,
        ),
    )
}


@dataclass(frozen=True)
class AutoscaleScenario:
    """A run of the gateway's autoscaler (``load.burst``); the peers cannot scale."""

    name: str
    about: str
    plan: Callable[[float], Plan]  # from the phase length, s


AUTOSCALE = {
    s.name: s
    for s in (
        AutoscaleScenario(
            "burst",
            "1-8 replicas (50 ms, 4 slots), 40 rps, a step to 160 rps for 1.5 phases, then "
            "40 rps again",
            lambda phase_s: step_plan(40, 4, phase_s, target_concurrency=3),
        ),
        AutoscaleScenario(
            "from-zero",
            "0-8 replicas (50 ms, 4 slots, 2 s to start, like a model loading): idle, a step "
            "to 80 rps for 1.5 phases, idle again until the pool is back to zero; requests "
            "wait for the first replica (at most 256 of them, for at most 60 s)",
            lambda phase_s: Plan(
                (("idle", 0, phase_s / 4), ("step", 80, 1.5 * phase_s), ("after", 0, 2 * phase_s)),
                {"min_replicas": 0, "target_concurrency": 3},
                {**REPLICA, "startup_delay_s": 2},
            ),
        ),
    )
}

NAMES = [*SCENARIOS, *AUTOSCALE]
