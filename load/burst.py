"""The ``burst`` benchmark: how the embedded autoscaler follows a step in load.

It starts a gateway whose one pool is autoscaled by the process driver over sim replicas
(``--service-ms 50 --slots 4``: about 80 rps each when fully used), then sends open-loop
Poisson load in three phases: steady at ``--base-rate`` for ``--phase-s`` seconds, a step
to ``--burst-x`` times that for 1.5 x ``--phase-s``, and the base rate again for
2 x ``--phase-s`` so that the scale-down shows. Every second it scrapes the gateway's
``/metrics`` (replicas ready and starting, desired, queue depth); the gateway's JSON log
gives the exact moments replicas were started and became ready.

    python -m load.burst --base-rate 40 --burst-x 4 --phase-s 20 --json load/out/burst.json

It has its own small sender rather than ``run_load``: the figures are per-second series
(offered and achieved rate, p99 per second) and per-phase percentiles, which need each
request's schedule and outcome, while ``run_load`` returns one summary per run. Its parts
(error kinds, percentiles, the request body) are reused, and the sender is open-loop in the
same way: arrivals drawn up front, each request its own task.

``bench`` runs any ``Plan`` (phases whose second one is the step, and autoscaler settings
over ``SCALE``): ``python -m load.bench burst`` and ``from-zero`` (``min_replicas`` 0, idle
before and after the step) run theirs through it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import math
import os
import random
import shutil
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from gateway.control.drivers import free_port
from load.loadgen import DEFAULT_BODY, distribution, error_kind, percentile
from load.procs import Procs, python, stat_fields, wait_for_url, write_config

POOL = "default"
OUT = Path(__file__).parent / "out"  # git-ignored
REPLICA = {"service_ms": 50, "slots": 4}  # one sim replica: 4 slots x 20/s = 80 rps
SCALE = {  # short windows so a two-minute run shows a whole up and down cycle
    "min_replicas": 1, "max_replicas": 8, "stable_window_s": 20.0, "panic_window_s": 4.0,
    "scale_down_delay_s": 5.0, "tick_s": 0.5, "drain_timeout_s": 10.0, "on_exit": "stop",
}  # fmt: skip
Shot = dict[str, Any]  # at (scheduled), sent, done: s from the start; latency s; outcome
Phase = tuple[str, float, float]  # name, arrivals per second (0: none), seconds


@dataclass(frozen=True)
class Plan:
    """One run: the load phases, the second of which is the step the autoscaler must
    follow, the autoscaler's settings that differ from ``SCALE``, and the sim flags of a
    replica."""

    phases: tuple[Phase, ...]
    scale: dict[str, Any] = field(default_factory=dict)
    replica: dict[str, Any] = field(default_factory=lambda: dict(REPLICA))
    seed: int = 1
    timeout: float = 30.0  # per request, s

    @property
    def bounds(self) -> tuple[float, float, float]:
        """When the step starts, when it ends, and when the run ends (s)."""
        ends = list(itertools.accumulate(length for _, _, length in self.phases))
        return ends[0], ends[1], ends[-1]


def step_plan(base_rate: float, burst_x: float, phase_s: float, **scale: Any) -> Plan:
    """Steady, a step to ``burst_x`` times the rate for 1.5 phases, then 2 phases of the
    base rate again, so that the scale-down shows."""
    phases = (("steady", base_rate, phase_s), ("burst", base_rate * burst_x, 1.5 * phase_s),
              ("after", base_rate, 2 * phase_s))  # fmt: skip
    return Plan(phases, scale)


def gateway_config(plan: Plan, port: int, admin: int, state: Path) -> Any:
    """Like config/gateway.yaml, with the gateway's queue as the only place requests wait
    (``max_inflight_per_replica`` = the sim's slots), so concurrency is what it measures."""
    sim = ["{python}", "-m", "backends.sim", "--port", "{port}"]
    sim += [f"--{key.replace('_', '-')}={value}" for key, value in plan.replica.items()]
    autoscale = {"driver": "process", "command": sim, **SCALE, **plan.scale}
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "routes": [{"path": "/predict", "pool": POOL}],
        "drain_timeout_s": 10, "log_format": "json", "state_dir": str(state),
        "pools": {POOL: {
            "max_inflight_per_replica": plan.replica["slots"],
            "queue": {"max_size": 1024, "timeout_s": 10},
            "health": {"interval_s": 1},
            "autoscale": autoscale,
        }},
    }  # fmt: skip


def arrivals(phases: tuple[Phase, ...], seed: int) -> list[Shot]:
    """Poisson arrivals, phase by phase; memoryless, so restarting at a boundary is exact."""
    rng, shots, start = random.Random(seed), [], 0.0
    for name, rate, length in phases:
        at = start + rng.expovariate(rate) if rate > 0 else start + length  # idle: none
        while at < start + length:
            shots.append({"phase": name, "at": at, "sent": None, "done": None,
                          "latency": None, "outcome": "unsent"})  # fmt: skip
            at += rng.expovariate(rate)
        start += length
    return shots


async def send(url: str, shots: list[Shot], start: float, request_timeout: float) -> None:
    """Send every shot at its time (relative to ``start``), whatever the answers do, and
    record its outcome in place. Bounded: one pass over a finite schedule, each request
    bounded by ``request_timeout``, and the stragglers cancelled after that."""
    clock, tasks = time.perf_counter, set()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=10_000, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=request_timeout)
    ) as session:

        async def one(shot: Shot) -> None:
            shot["sent"] = sent = clock() - start
            try:
                async with session.post(url, data=DEFAULT_BODY, headers=headers) as resp:
                    await resp.read()
                    ok = 200 <= resp.status < 300
                    shot["outcome"] = "ok" if ok else f"http_{resp.status}"
            except Exception as exc:
                shot["outcome"] = error_kind(exc)
            shot["done"] = clock() - start
            shot["latency"] = shot["done"] - sent

        for shot in shots:
            delay = start + shot["at"] - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(shot))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks), timeout=request_timeout + 5)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for shot in shots:
        if shot["done"] is None and shot["sent"] is not None:
            shot["outcome"] = "unfinished"


async def sample(
    url: str, start: float, stop: asyncio.Event, limit: int,
    rows: list[dict[str, float]], state: Path, pids: dict[int, str],
) -> None:  # fmt: skip
    """Scrape the autoscaler's gauges into ``rows`` once a second on an absolute schedule
    until ``stop`` (at most ``limit`` times); note in ``pids`` every replica process recorded
    in ``state``, so that the end can check that none is left, not even one started and
    stopped in between (a record goes when its replica is stopped)."""
    keys = {"gateway_replicas_desired": "desired", "gateway_queue_depth": "queue"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        for tick in range(limit):
            row = {"t": time.perf_counter() - start, "ready": 0.0, "starting": 0.0,
                   "draining": 0.0, "desired": math.nan, "queue": math.nan}  # fmt: skip
            try:
                async with session.get(url) as resp:
                    text = await resp.text()
                for family in text_string_to_metric_families(text):
                    for s in family.samples:
                        if s.labels.get("pool") != POOL:
                            continue
                        if s.name == "gateway_replicas":  # one sample per state
                            row[s.labels["state"]] = s.value
                        elif s.name in keys:
                            row[keys[s.name]] = s.value
            except (aiohttp.ClientError, TimeoutError, ValueError):
                row["error"] = 1.0
            rows.append(row)
            note_replicas(state, pids)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), start + tick + 1 - time.perf_counter())
            if stop.is_set():
                break


def note_replicas(state: Path, pids: dict[int, str]) -> None:
    """Add the pid and kernel start time of each replica the process driver recorded."""
    for path in state.rglob("*.json"):  # the driver keeps them in a subfolder
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = orjson.loads(path.read_bytes())
            pids[int(record["pid"])] = str(record["started"])


def log_events(log: Path, wall0: float) -> list[dict[str, Any]]:
    """The autoscaler's start and ready lines of the gateway's JSON log, on our time axis."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = orjson.loads(line)
            if "starting replica" in entry["msg"] or "ready after" in entry["msg"]:
                ts = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
                events.append({"t": round(ts.timestamp() - wall0, 3), "msg": entry["msg"]})
    return events


def alive(pid: int, started: str) -> bool:
    """True if ``pid`` is still the process we saw (same kernel start time) and not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == started


def reap(pids: dict[int, str], grace_s: float = 5.0) -> list[int]:
    """Replica processes still running after the gateway stopped (it should have stopped
    them all): they were started for this run, so stop them, SIGTERM then SIGKILL."""
    left = [pid for pid, started in pids.items() if alive(pid, started)]
    for pid in left:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(alive(pid, pids[pid]) for pid in left) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        if alive(pid, pids[pid]):
            os.kill(pid, signal.SIGKILL)
    return left


def analyse(shots: list[Shot], samples: list[dict[str, float]], events: list[Any],
            plan: Plan) -> dict[str, Any]:  # fmt: skip
    """Per-phase figures, headline numbers and per-second series from the raw records."""
    burst_at, after_at, end = plan.bounds
    (first, _, _), (step, _, _), *rest = plan.phases
    groups: dict[str, list[Shot]] = {first: [], step: [], f"{step}, 2nd half": []}
    groups |= {name: [] for name, _, _ in rest} | {"all": shots}
    for s in shots:
        groups[s["phase"]].append(s)
        if s["phase"] == step and s["at"] >= (burst_at + after_at) / 2:
            groups[f"{step}, 2nd half"].append(s)
    phases = {}
    for name, group in groups.items():
        ok = [s["latency"] for s in group if s["outcome"] == "ok"]
        errors = Counter(s["outcome"] for s in group if s["outcome"] != "ok")
        phases[name] = {"sent": len(group), "ok": len(ok), "errors": dict(sorted(errors.items())),
                        "latency_ms": distribution(ok)}  # fmt: skip

    def after(t0: float, text: str) -> float | None:
        return next((e["t"] - t0 for e in events if e["t"] >= t0 and text in e["msg"]), None)

    before = next((r["ready"] for r in reversed(samples) if r["t"] < burst_at), 1.0)
    down = next((r["t"] - after_at for r in samples if r["t"] >= after_at
                 and r["ready"] <= before and r["starting"] == 0), None)  # fmt: skip
    in_run = [r for r in samples if r["t"] <= end]
    replica_s = sum(a["ready"] * (b["t"] - a["t"]) for a, b in itertools.pairwise(in_run))
    seconds = math.ceil(max([end] + [s["done"] or 0.0 for s in shots]))
    offered, achieved = [0] * seconds, [0] * seconds
    by_second: list[list[float]] = [[] for _ in range(seconds)]
    for s in shots:
        offered[int(s["at"])] += 1
        if s["outcome"] == "ok":
            achieved[min(int(s["done"]), seconds - 1)] += 1
            by_second[int(s["at"])].append(s["latency"])
    return {
        "phases": phases,
        "first_start_after_step_s": after(burst_at, "starting replica"),
        "first_ready_after_step_s": after(burst_at, "ready after"),
        "scale_down_after_burst_s": down,
        "ready_before_burst": before,
        "max_ready": max(r["ready"] for r in samples),
        "max_desired": max((r["desired"] for r in samples if r["desired"] >= 0), default=0),
        "replica_seconds": replica_s,
        "lag_p99_ms": distribution([s["sent"] - s["at"] for s in shots if s["sent"] is not None])[
            "p99"
        ],
        "series": {
            "offered_rps": offered,
            "achieved_rps": achieved,
            "p99_ms": [percentile(sorted(v), 99) * 1000 if v else math.nan for v in by_second],
        },
    }


def table(result: dict[str, Any]) -> str:
    """The headline figures as a Markdown table, ready to paste into RESULTS.md."""
    lines = ["| phase | offered rps | sent | served | errors | p50 ms | p99 ms |",
             "|---|---:|---:|---:|---|---:|---:|"]  # fmt: skip
    for name, p in result["phases"].items():
        rate = next((r for n, r, _ in result["phases_spec"] if n == name.split(",")[0]), None)
        errors = ", ".join(f"{k} {v}" for k, v in p["errors"].items()) or "0"
        lat = p["latency_ms"]
        lines.append(f"| {name} | {'' if rate is None else f'{rate:g}'} | {p['sent']} | "
                     f"{p['ok']} | {errors} | {lat['p50']:.1f} | {lat['p99']:.1f} |")  # fmt: skip

    def secs(v: float | None) -> str:
        return "never" if v is None else f"{v:.1f} s"

    lines += [
        "", "| autoscaler | |", "|---|---|",
        f"| first replica started after the step | {secs(result['first_start_after_step_s'])} |",
        f"| first added replica ready after the step | "
        f"{secs(result['first_ready_after_step_s'])} |",
        f"| max replicas ready (max desired) | {result['max_ready']:g} "
        f"({result['max_desired']:g}) |",
        f"| back to {result['ready_before_burst']:g} ready after the burst | "
        f"{secs(result['scale_down_after_burst_s'])} |",
        f"| replica-seconds (ready, over {result['bounds'][2]:g} s) | "
        f"{result['replica_seconds']:.0f} |",
        f"| load generator send lag p99 | {result['lag_p99_ms']:.1f} ms |",
        f"| replica processes left after stop | {len(result['leftover_pids'])} "
        f"(of {result['replica_pids_seen']} started) |",
    ]  # fmt: skip
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Rate, p99 and replicas over time, one panel each, the burst shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    series, (burst_at, after_at, _) = result["series"], result["bounds"]
    step = result["phases_spec"][1][0]
    seconds = [i + 0.5 for i in range(len(series["offered_rps"]))]
    fig, (rate, p99, reps) = plt.subplots(3, 1, sharex=True, figsize=(10, 8))
    rate.plot(seconds, series["offered_rps"], label="offered (sent per s)", color="0.5")
    rate.plot(seconds, series["achieved_rps"], label="achieved (2xx answers per s)")
    rate.set_ylabel("request rate (rps)")
    p99.plot(seconds, series["p99_ms"], color="tab:red", label="p99 of requests sent that second")
    p99.set_yscale("log")
    p99.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 50, 100, 200, 500, 1000
    p99.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    p99.yaxis.set_minor_formatter(NullFormatter())
    p99.set_ylabel("p99 latency (ms, log)")
    t = [r["t"] for r in result["samples"]]
    reps.step(t, [r["ready"] for r in result["samples"]], where="post", label="ready")
    reps.step(t, [r["desired"] for r in result["samples"]], where="post", ls="--",
              label="desired")  # fmt: skip
    reps.step(t, [r["starting"] for r in result["samples"]], where="post", alpha=0.5,
              label="starting")  # fmt: skip
    reps.set_ylabel("replicas")
    reps.set_xlabel("time since the load started (s)")
    for ax in (rate, p99, reps):
        ax.axvspan(burst_at, after_at, color="orange", alpha=0.15, label=step)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
    rates = " -> ".join(f"{r:g}" for _, r, _ in result["phases_spec"])
    scale = result["config"]["pools"][POOL]["autoscale"]
    replica = " ".join(scale["command"][5:])  # the sim's flags
    fig.suptitle(f"{rates} rps; {scale['min_replicas']}-{scale['max_replicas']} replicas"
                 f" ({replica}), target concurrency {scale['target_concurrency']:g}")  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def bench(plan: Plan, logs: Path) -> dict[str, Any]:
    """Start the gateway, run the phases, stop everything, and check nothing is left.
    ``logs`` gets the gateway's config and log."""
    state = Path(tempfile.mkdtemp(prefix="burst-state-"))
    port, admin = free_port(), free_port()
    config = gateway_config(plan, port, admin, state)
    from_zero = config["pools"][POOL]["autoscale"]["min_replicas"] == 0
    end = plan.bounds[2]
    pids: dict[int, str] = {}
    samples: list[dict[str, float]] = []
    with Procs(log_dir=logs, grace_s=40) as procs:
        try:
            cfg = write_config(procs.log_dir / "gateway.yaml", config)
            gw = procs.start("gateway", python("gateway", "run", "--config", str(cfg)))
            url = f"http://127.0.0.1:{port}/predict"
            if from_zero:  # a request would start a replica: ask the gateway itself
                await wait_for_url(f"http://127.0.0.1:{port}/healthz", within=60, proc=gw)
            else:
                await wait_for_url(url, within=60, proc=gw, method="POST", body=DEFAULT_BODY)
            shots, stop = arrivals(plan.phases, plan.seed), asyncio.Event()
            start, wall0 = time.perf_counter(), time.time()
            scrape = f"http://127.0.0.1:{admin}/metrics"
            sampler = asyncio.create_task(
                sample(scrape, start, stop, int(end + 60), samples, state, pids)
            )
            await send(url, shots, start, plan.timeout)
            await asyncio.sleep(start + end - time.perf_counter())  # idle phases at the end
            stop.set()
            await sampler
        finally:
            procs.stop_all()  # SIGTERM: with on_exit stop the gateway drains its replicas
            leftover = await asyncio.to_thread(reap, pids)  # it waits: off the loop
            shutil.rmtree(state, ignore_errors=True)
    events = log_events(procs.log_path("gateway"), wall0)
    result = analyse(shots, samples, events, plan)
    return {"config": config, "phases_spec": plan.phases, "bounds": plan.bounds,
            "machine": {"cpus": os.cpu_count()}, **result, "leftover_pids": leftover,
            "replica_pids_seen": len(pids),
            "samples": samples, "events": events, "shots": shots}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.burst", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--base-rate", type=float, default=40.0, help="steady arrivals per second")
    p.add_argument("--burst-x", type=float, default=4.0, help="the burst's rate / base rate")
    p.add_argument("--phase-s", type=float, default=20.0,
                   help="steady length; the burst lasts 1.5x, the tail 2x")  # fmt: skip
    p.add_argument("--target-concurrency", type=float, default=3.0,
                   help="autoscale target per replica (4 slots: 75%% use)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="write every record here")
    p.add_argument("--png", type=Path, default=OUT / "burst.png", help="the figure")
    args = p.parse_args(argv)
    if args.base_rate <= 0 or args.burst_x <= 0 or not 1 <= args.phase_s <= 120:
        p.error("need --base-rate > 0, --burst-x > 0 and 1 <= --phase-s <= 120")
    plan = step_plan(args.base_rate, args.burst_x, args.phase_s,
                     target_concurrency=args.target_concurrency)  # fmt: skip
    plan = dataclasses.replace(plan, seed=args.seed, timeout=args.timeout)
    result = uvloop.run(bench(plan, OUT / "burst-logs"))
    print(table(result))
    plot(result, args.png)
    print(f"figure: {args.png}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 1 if result["leftover_pids"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
