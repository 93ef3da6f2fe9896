"""``python -m load.bench autoscale-trace``: autoscalers over hours of a synthesized trace.

Four pools at once, each an application shape from the published statistics of
serverless and LLM traffic, seeded: ``timer`` (a timer-triggered function, every 120 s
+- 2 %: Shahrad et al., "Serverless in the Wild", ATC 2020, find most Azure Functions
apps this regular), ``diurnal`` (Poisson, its rate a day's wave from 0.05 to 8 per s,
compressed into 2 h), ``bursty`` (BurstGPT's Gamma arrivals: shape 0.3, a mean gap of
4 s, 2 s LLM answers) and ``rare`` (exponential gaps of 20 min on average). Replicas take
20-60 s to start, as model servers do, and serve 4 requests at once.

It is a simulation, in virtual time, so that hours of trace take seconds and every
contestant meets the very same arrivals: requests queue for a pool's slots, replicas
start, drain and wake on the decisions, and the gateway's contestants run the gateway's
own pure controller (``gateway/control/controller.py``, with ``scaling.plan`` and the
tiers of ``tiers.py``), the same code its reconcile loop runs. The contestants:

* ``gateway``: its defaults (learnt keep-alive), with warm tiers (paused 60 s, then
  stopped 10 min, 2 held) and without (``gateway-notiers``);
* ``kpa``: Knative's KPA with its published defaults (``kpa.py``), on the same target;
* ``fixed-K``: the gateway's scaling with a fixed keep-alive of K s for the last replica;
* ``ray-serve``: Ray Serve's own default policy and delays (``ray_policy.py``: Ray's
  code, run in a venv of ``ray[serve]`` from PyPI, its clock the trace's);
* the lower bound: the integral of ceil(offered concurrency / target) over the trace,
  each request served the moment it arrives: no real autoscaler reaches it.

Reported per contestant, all pools together: SLO attainment (answered within
``SLO_WAIT_S`` of waiting), errors (waited past ``TIMEOUT_S``), cold starts (a client
came to a pool with no replica ready, and a start ended its wait) and the times a wake
from a tier ended it instead, with the waits on a cold pool they cost clients;
replica-seconds running (starting, ready, draining) and held in tiers, peak
over-provisioning against the bound (replicas running over its need, per tick), and
scale events (starts, drains, wakes).
The model behind the wake times: a paused replica thaws in 0.05 s; a stopped one
restarts in 0.8 x its start-up (the container is there, the weights must still load).
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import random
import subprocess
import sys
import venv
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from gateway import config
from gateway.control.controller import Controller, Observation
from gateway.control.scaling import ReplicaView, plan
from gateway.control.startup import StartupTimes
from gateway.control.tiers import ORDER, Tier, TierRules
from gateway.dataplane.admission import ServiceTime
from gateway.dataplane.pool import GAPS_KEPT, Tally
from load.bench.kpa import TICK_S as KPA_TICK_S
from load.bench.kpa import Kpa

NAME = "autoscale-trace"
ABOUT = "four pools over 4 h of synthesized serverless and LLM traffic, simulated"
DURATION_S = 4 * 3600.0
SLO_WAIT_S = 1.0  # a request answered after waiting this long or less met the SLO
TIMEOUT_S = 60.0  # one still waiting then is an error
TARGET = 3.0  # offered concurrency per replica, for every contestant: 4 slots at 75 %
SIGMA = 0.5  # of the lognormal service times
WAKE_S: dict[Tier, Callable[[float], float]] = {
    "paused": lambda startup_s: 0.05,
    "asleep": lambda startup_s: 3.0,
    "stopped": lambda startup_s: 0.8 * startup_s,
}
RUNNING = ("starting", "ready", "draining")


@dataclass(frozen=True)
class App:
    name: str
    arrivals: Callable[[random.Random, float], list[float]]
    startup_s: float
    service_s: float  # the mean
    slots: int = 4


def timer(period_s: float, jitter: float) -> Callable[[random.Random, float], list[float]]:
    def times(rng: random.Random, until: float) -> list[float]:
        t, out = rng.uniform(0, period_s), []
        while t < until:
            out.append(t)
            t += period_s * (1 + rng.gauss(0, jitter))
        return out

    return times


def diurnal(low: float, high: float, day_s: float) -> Callable[[random.Random, float], list[float]]:
    """Poisson with a day's wave of rate (thinning)."""

    def times(rng: random.Random, until: float) -> list[float]:
        t, out = 0.0, list[float]()
        while True:
            t += rng.expovariate(high)
            if t >= until:
                return out
            rate = low + (high - low) * (1 - math.cos(2 * math.pi * t / day_s)) / 2
            if rng.random() < rate / high:
                out.append(t)

    return times


def gamma_gaps(mean_s: float, shape: float) -> Callable[[random.Random, float], list[float]]:
    def times(rng: random.Random, until: float) -> list[float]:
        t, out = 0.0, []
        while (t := t + rng.gammavariate(shape, mean_s / shape)) < until:
            out.append(t)
        return out

    return times


APPS = (
    App("timer", timer(120.0, 0.02), startup_s=20.0, service_s=0.5),
    App("diurnal", diurnal(0.05, 8.0, 7200.0), startup_s=40.0, service_s=0.4),
    App("bursty", gamma_gaps(4.0, 0.3), startup_s=60.0, service_s=2.0),
    App("rare", gamma_gaps(1200.0, 1.0), startup_s=30.0, service_s=1.0),
)


def requests(app: App, seed: int, until: float) -> list[tuple[float, float]]:
    """(arrival, service time) of every request of ``app``, seeded."""
    rng = random.Random(f"{seed}-{app.name}")
    mu = math.log(app.service_s) - SIGMA**2 / 2
    return [(t, rng.lognormvariate(mu, SIGMA)) for t in app.arrivals(rng, until)]


def lower_bound(reqs: list[tuple[float, float]], until: float) -> tuple[float, list[float]]:
    """The integral of ceil(offered concurrency / TARGET), each request in service from
    its arrival; and that ceil at each whole second, for the over-provisioning."""
    edges = sorted([(t, 1) for t, _ in reqs] + [(t + s, -1) for t, s in reqs])
    total, level, last = 0.0, 0, 0.0
    per_s = [0.0] * (int(until) + 1)
    for t, step in [*edges, (until, 0)]:
        t = min(t, until)
        need = math.ceil(level / TARGET)
        total += need * (t - last)
        for second in range(math.ceil(last), int(t) + 1):
            if second <= until and last <= second < t:
                per_s[second] = max(per_s[second], need)
        level, last = level + step, t
    return total, per_s


# -- the contestants ----------------------------------------------------------------------


def gateway_settings(app: App, **changes: Any) -> config.Autoscale:
    base = {
        "driver": "process", "command": ["{port}"], "min_replicas": 0, "max_replicas": 20,
        "target_concurrency": TARGET, "expected_startup_s": 10.0,
    }  # fmt: skip
    return config.Autoscale.model_validate({**base, **changes})


@dataclass
class Gateway:
    """The gateway's controller over a simulated pool."""

    settings: config.Autoscale

    def __post_init__(self) -> None:
        self.tick_s = self.settings.tick_s
        t = self.settings.tiers
        self.tiers = None if t is None else TierRules(
            t.paused_s, t.asleep_s, t.stopped_s, t.max_warm, frozenset({"paused", "stopped"})
        )  # fmt: skip
        self.control: Controller | None = None
        self.startup = StartupTimes(self.settings.expected_startup_s)

    def decide(self, now: float, pool: SimPool) -> int:
        if self.control is None:
            self.control = Controller(self.settings, pool.tally, now)
        live = [r for r in pool.replicas.values() if r.state in ("ready", "draining")]
        seen = Observation(
            pool.tally, pool.service.update(pool.tally), pool.working, len(pool.queue),
            not live, pool.quiet_since, pool.gaps, pool.count("ready"),
            [r.since + r.expected_s - now for r in pool.replicas.values()
             if r.state == "starting"],
            [float(pool.app.slots)] * len(live), self.revive_s(pool),
        )  # fmt: skip
        return self.control.decide(now, seen).desired

    def revive_s(self, pool: SimPool) -> float:
        """As the reconcile loop's: the wake of the warmest held replica, else a start."""
        held = [r.state for r in pool.replicas.values() if r.state in ORDER]
        if not held:
            return self.startup.expected_s
        return WAKE_S[min(held, key=ORDER.index)](pool.app.startup_s)

    def started(self, startup_s: float) -> None:
        self.startup.add(startup_s)


@dataclass
class Knative:
    """The KPA reference, fed the requests in the system averaged over each tick."""

    tick_s: float = KPA_TICK_S
    tiers: TierRules | None = None

    def __post_init__(self) -> None:
        self.kpa = Kpa(TARGET, 20)

    def decide(self, now: float, pool: SimPool) -> int:
        in_system = pool.take_in_system_average(now)
        current = pool.count("starting") + pool.count("ready")
        return self.kpa.decide(now, in_system, pool.count("ready"), current)

    def started(self, startup_s: float) -> None:
        pass


RAY = Path(__file__).resolve().parents[1] / "out" / "ray"  # git-ignored: ray[serve]'s venv
RAY_LOOK_BACK_S = 30.0  # Ray Serve averages ongoing requests over this (look_back_period_s)


def ensure_ray() -> str:
    """The Python of a venv with ``ray[serve]``, installed from PyPI on first use."""
    python = RAY / "bin" / "python"
    if not python.exists():
        print("installing ray[serve] from PyPI", file=sys.stderr, flush=True)
        venv.create(RAY, with_pip=True)
        subprocess.run([str(RAY / "bin" / "pip"), "install", "-q", "ray[serve]"], check=True)
    return str(python)


@dataclass
class RayServe:
    """Ray Serve's default policy itself (``ray_policy.py``, in Ray's own venv), fed the
    ongoing requests averaged over its look-back, one decision a second."""

    tick_s: float = 1.0
    tiers: TierRules | None = None

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            [ensure_ray(), str(Path(__file__).with_name("ray_policy.py")), str(TARGET), "20"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.samples: deque[tuple[float, float]] = deque()
        self.target = 0

    def decide(self, now: float, pool: SimPool) -> int:
        self.samples.append((now, pool.take_in_system_average(now)))
        while self.samples[0][0] <= now - RAY_LOOK_BACK_S:
            self.samples.popleft()
        ongoing = sum(v for _, v in self.samples) / len(self.samples)
        if pool.working + len(pool.queue) and not pool.count("ready"):
            ongoing = max(ongoing, 1.0)  # a handle holds a request: Ray's cold start path
        seen = {"now": now, "running": pool.count("ready"), "target": self.target,
                "ongoing": ongoing}  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(seen) + "\n")
        self.proc.stdin.flush()
        self.target = int(self.proc.stdout.readline())
        return self.target

    def started(self, startup_s: float) -> None:
        pass

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def fixed(keep_alive_s: float, app: App) -> Gateway:
    """The gateway's scaling with a fixed keep-alive for the last replica, no tiers."""
    return Gateway(gateway_settings(app, keep_alive_s=keep_alive_s))


CONTESTANTS: dict[str, Callable[[App], Gateway | Knative | RayServe]] = {
    "gateway": lambda app: Gateway(gateway_settings(
        app, tiers={"paused_s": 60, "stopped_s": 600, "max_warm": 2})),
    "gateway-notiers": lambda app: Gateway(gateway_settings(app)),
    "kpa": lambda app: Knative(),
    "ray-serve": lambda app: RayServe(),
    **{f"fixed-{k}": partial(fixed, k) for k in (60, 300, 900)},
}  # fmt: skip


# -- the simulation -----------------------------------------------------------------------


@dataclass
class SimReplica:
    rid: int
    state: str  # starting, ready, draining, paused, stopped
    since: float
    expected_s: float
    ready_at: float = 0.0
    busy: int = 0
    tier_since: float = 0.0
    woken: bool = False


@dataclass
class SimPool:
    app: App
    policy: Gateway | Knative | RayServe
    reqs: list[tuple[float, float]]
    seed: int
    until: float = DURATION_S
    replicas: dict[int, SimReplica] = field(default_factory=dict)
    queue: deque[tuple[float, float, bool]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.seed}-{self.app.name}-replicas")
        self.ids = itertools.count()
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.arrivals = self.answers = 0
        self.busy_s, self.working = 0.0, 0
        self.service = ServiceTime(self.tally)
        self.quiet_since: float | None = 0.0
        self.gaps: deque[float] = deque(maxlen=GAPS_KEPT)
        self.in_system_s, self.in_system_at = 0.0, 0.0  # for the KPA's tick averages
        self.held_s: dict[str, float] = dict.fromkeys(("running", *ORDER), 0.0)
        self.waits: list[float] = []
        self.cold_waits: list[float] = []
        self.errors = self.cold_starts = self.cold_wakes = self.wakes = self.scale_events = 0
        self.client_waits_cold = False  # a client came to a pool with no replica ready
        self.series: list[tuple[float, int, int, int]] = []  # t, running, held, queued

    @property
    def tally(self) -> Tally:
        return Tally(self.arrivals, self.answers, self.busy_s)

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.replicas.values())

    def take_in_system_average(self, now: float) -> float:
        self.advance(now)
        span = now - self.in_system_at
        average = self.in_system_s / span if span > 0 else float(self.working + len(self.queue))
        self.in_system_s, self.in_system_at = 0.0, now
        return average

    def push(self, t: float, kind: str, data: Any = None) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, data))

    def advance(self, t: float) -> None:
        span = t - self.now
        if span > 0:
            self.busy_s += self.working * span
            self.in_system_s += (self.working + len(self.queue)) * span
            for r in self.replicas.values():
                self.held_s["running" if r.state in RUNNING else r.state] += span
            self.now = t

    def run(self) -> None:
        for t, service_s in self.reqs:
            self.push(t, "arrive", service_s)
        self.push(self.policy.tick_s, "tick")
        while self.events:
            t, _, kind, data = heapq.heappop(self.events)
            if t > self.until:
                break
            self.advance(t)
            getattr(self, f"on_{kind}")(data)
        self.errors += len(self.queue)
        if isinstance(self.policy, RayServe):
            self.policy.close()

    # -- events

    def on_arrive(self, service_s: float) -> None:
        self.arrivals += 1
        if self.quiet_since is not None:
            self.gaps.append(self.now - self.quiet_since)
            self.quiet_since = None
        cold = self.count("ready") == 0
        self.client_waits_cold = self.client_waits_cold or cold  # until a replica is ready
        self.queue.append((self.now, service_s, cold))
        self.dispatch()
        if cold:
            self.on_tick(None, again=False)  # the pool wakes its autoscaler at once

    def on_done(self, rid: int) -> None:
        r = self.replicas[rid]
        r.busy -= 1
        self.working -= 1
        self.answers += 1
        self.dispatch()
        if r.state == "draining" and not r.busy:
            self.retire(r)
        if not self.working and not self.queue and self.quiet_since is None:
            self.quiet_since = self.now

    def on_ready(self, rid: int) -> None:
        r = self.replicas.get(rid)
        if r is None or r.state != "starting":
            return
        r.state = "ready"
        if self.client_waits_cold:  # what a client met: a start, or a wake from a tier
            self.cold_wakes += r.woken
            self.cold_starts += not r.woken
            self.client_waits_cold = False
        if not r.woken:
            self.policy.started(self.now - r.since)
        self.dispatch()

    def on_tick(self, _: Any, again: bool = True) -> None:
        desired = self.policy.decide(self.now, self)
        views = [ReplicaView(str(r.rid), r.state, r.busy, self.now - r.since)  # type: ignore[arg-type]
                 for r in self.replicas.values()]  # fmt: skip
        todo = plan(desired, views)
        for rid in todo.wake:
            self.wake(self.replicas[int(rid)])
        for _ in range(todo.start):
            self.start()
        for rid in todo.drain:
            self.drain(self.replicas[int(rid)])
        self.age_tiers()
        self.series.append((self.now, self.count("ready") + self.count("starting")
                            + self.count("draining"), sum(r.state in ORDER for r in
                            self.replicas.values()), len(self.queue)))  # fmt: skip
        if again:
            self.push(self.now + self.policy.tick_s, "tick")

    # -- actions

    def start(self) -> None:
        rid = next(self.ids)
        startup_s = self.app.startup_s * self.rng.uniform(0.9, 1.1)
        self.replicas[rid] = SimReplica(rid, "starting", self.now, self.policy_expected())
        self.push(self.now + startup_s, "ready", rid)
        self.scale_events += 1

    def policy_expected(self) -> float:
        startup = getattr(self.policy, "startup", None)
        return startup.expected_s if startup is not None else self.app.startup_s

    def wake(self, r: SimReplica) -> None:
        tier: Tier = r.state  # type: ignore[assignment]
        wake_s = WAKE_S[tier](self.app.startup_s)
        r.state, r.since, r.expected_s, r.woken = "starting", self.now, wake_s, True
        self.push(self.now + wake_s, "ready", r.rid)
        self.scale_events += 1
        self.wakes += 1

    def drain(self, r: SimReplica) -> None:
        r.state = "draining"
        self.scale_events += 1
        if not r.busy:
            self.retire(r)

    def retire(self, r: SimReplica) -> None:
        tiers = self.policy.tiers
        held = sum(x.state in ORDER for x in self.replicas.values())
        tier = None if tiers is None else tiers.first(held)
        if tier is None:
            del self.replicas[r.rid]
        else:
            r.state, r.tier_since = tier, self.now

    def age_tiers(self) -> None:
        tiers = self.policy.tiers
        for r in list(self.replicas.values()):
            if r.state not in ORDER or tiers is None:
                continue
            after = tiers.after(r.state, self.now - r.tier_since)
            if after is None:
                del self.replicas[r.rid]
            elif after != r.state:
                r.state, r.tier_since = after, self.now

    def dispatch(self) -> None:
        while self.queue:
            ready = [
                r for r in self.replicas.values() if r.state == "ready" and r.busy < self.app.slots
            ]
            if not ready:
                return
            at, service_s, cold = self.queue.popleft()
            wait = self.now - at
            if wait > TIMEOUT_S:
                self.errors += 1
                continue
            r = min(ready, key=lambda x: x.busy)
            r.busy += 1
            self.working += 1
            self.quiet_since = None
            self.waits.append(wait)
            if cold:
                self.cold_waits.append(wait)
            self.push(self.now + service_s, "done", r.rid)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * q / 100) - 1))]


def run(
    seed: int = 1, only: list[str] | None = None, duration_s: float = DURATION_S
) -> dict[str, Any]:
    """Every contestant over every app; the figures, all pools summed, and per pool."""
    traces = {app.name: requests(app, seed, duration_s) for app in APPS}
    bounds = {app.name: lower_bound(traces[app.name], duration_s) for app in APPS}
    rows: dict[str, Any] = {}
    for name, make in CONTESTANTS.items():
        if only and name not in only:
            continue
        pools = []
        for app in APPS:
            sim = SimPool(app, make(app), traces[app.name], seed, duration_s)
            sim.run()
            need = bounds[app.name][1]
            over = max(
                (running - need[min(int(t), len(need) - 1)] for t, running, _, _ in sim.series),
                default=0,
            )
            pools.append({
                "pool": app.name, "requests": len(traces[app.name]), "waits": sim.waits,
                "cold_waits": sim.cold_waits, "errors": sim.errors, "cold_starts": sim.cold_starts,
                "wakes": sim.wakes, "cold_wakes": sim.cold_wakes,
                "replica_s": sim.held_s["running"],
                "held_s": sum(sim.held_s[t] for t in ORDER), "over": over,
                "scale_events": sim.scale_events, "series": minutes(sim.series, duration_s),
            })  # fmt: skip
        rows[name] = summarize(pools)
    rows["lower-bound"] = {
        "replica_s": sum(b[0] for b in bounds.values()),
        "pools": {app.name: {"series": [
            round(sum(bounds[app.name][1][m * 60 : (m + 1) * 60]) / 60, 2)
            for m in range(int(duration_s // 60))]} for app in APPS},
    }  # fmt: skip
    return {"duration_s": duration_s, "seed": seed, "slo_wait_s": SLO_WAIT_S, "rows": rows}


def minutes(series: list[tuple[float, int, int, int]], duration_s: float) -> list[list[float]]:
    """Per minute of the trace, the mean over its ticks: replicas running, held, and
    requests queued."""
    sums = [[0.0, 0.0, 0.0, 0.0] for _ in range(max(1, int(duration_s // 60)))]
    for t, running, held, queued in series:
        row = sums[min(int(t // 60), len(sums) - 1)]
        row[0], row[1], row[2], row[3] = (
            row[0] + running,
            row[1] + held,
            row[2] + queued,
            row[3] + 1,
        )
    return [[round(r[i] / r[3], 2) if r[3] else 0.0 for i in range(3)] for r in sums]


def plot(result: dict[str, Any], path: Path) -> None:
    """Replicas running per pool, the mean of each minute: the gateway, the KPA
    reference and the lower bound; the gateway's held replicas dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(len(APPS), 1, sharex=True, figsize=(11, 2.3 * len(APPS) + 1))
    for ax, app in zip(axes, APPS, strict=True):
        hours = [m / 60 for m in range(int(result["duration_s"] // 60))]
        bound = rows["lower-bound"]["pools"][app.name]["series"]
        ax.fill_between(hours, bound, step="post", color="0.85", label="lower bound")
        for name, style in (("kpa", {"color": "C1", "ls": "--"}),
                            ("gateway", {"color": "C0", "lw": 1.8})):  # fmt: skip
            if name in rows:
                series = rows[name]["pools"][app.name]["series"]
                ax.step(hours, [m[0] for m in series], where="post", label=name, **style)
                if name == "gateway":
                    ax.step(hours, [m[1] for m in series], where="post", color="C0", lw=0.8,
                            ls=":", label="gateway: held in tiers")  # fmt: skip
        ax.set_ylabel(f"{app.name}\nreplicas")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", ncol=4, fontsize=8)
    axes[-1].set_xlabel("hours into the trace")
    fig.suptitle(f"{NAME}: replicas running (the mean of each minute), seed {result['seed']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def section(result: dict[str, Any], figure: str) -> str:
    """Its section of RESULTS.md."""
    return "\n".join([
        f"### {NAME}", "", ABOUT + ".", "", f"```sh\n{result['command']}\n```", "",
        table(result), "", f"![{NAME}: replicas per pool over the trace]({figure})",
    ])  # fmt: skip


def summarize(pools: list[dict[str, Any]]) -> dict[str, Any]:
    waits = [w for p in pools for w in p["waits"]]
    cold = [w for p in pools for w in p["cold_waits"]]
    total = sum(p["requests"] for p in pools)
    met = sum(w <= SLO_WAIT_S for w in waits)
    return {
        "slo": met / total if total else 1.0,
        "errors": sum(p["errors"] for p in pools),
        "cold_starts": sum(p["cold_starts"] for p in pools),
        "wakes": sum(p["wakes"] for p in pools),
        "cold_wakes": sum(p["cold_wakes"] for p in pools),
        "cold_wait_mean_s": sum(cold) / len(cold) if cold else 0.0,
        "cold_wait_p99_s": percentile(cold, 99),
        "replica_s": sum(p["replica_s"] for p in pools),
        "held_s": sum(p["held_s"] for p in pools),
        "over": max(p["over"] for p in pools),
        "scale_events": sum(p["scale_events"] for p in pools),
        "pools": {p["pool"]: {k: v for k, v in p.items()
                              if k not in ("waits", "cold_waits", "pool")}
                  for p in pools},  # series included
    }  # fmt: skip


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    kpa_s = rows.get("kpa", {}).get("replica_s")
    bound_s = rows["lower-bound"]["replica_s"]
    head = ("| contestant | SLO met | errors | cold starts | woken for a client (all wakes) "
            "| cold wait mean / p99 s | replica-h | x KPA | x bound | held-h | peak over "
            "| scale events |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for name, r in rows.items():
        hours = r["replica_s"] / 3600
        vs_kpa = f"{r['replica_s'] / kpa_s:.2f}" if kpa_s else "-"
        vs_bound = f"{r['replica_s'] / bound_s:.2f}"
        if name == "lower-bound":
            lines.append(f"| {name} | | | | | | {hours:.1f} | {vs_kpa} | 1.00 | | | |")
            continue
        lines.append(
            f"| {name} | {100 * r['slo']:.2f} % | {r['errors']} | {r['cold_starts']} | "
            f"{r['cold_wakes']} ({r['wakes']}) | "
            f"{r['cold_wait_mean_s']:.1f} / {r['cold_wait_p99_s']:.1f} | "
            f"{hours:.1f} | {vs_kpa} | {vs_bound} | {r['held_s'] / 3600:.1f} | {r['over']:.0f} | "
            f"{r['scale_events']} |"
        )
    return "\n".join(lines)
