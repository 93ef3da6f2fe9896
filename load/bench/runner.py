"""Run a scenario: for each contestant, fresh replicas, the contestant, the load, the actions.

Each contestant's run is self-contained: its own replicas and proxy, started before and
stopped after (``Procs``), so nothing one contestant did (a killed replica, a slowed one,
a proxy's memory of failures) reaches the next. The load starts when the contestant has
answered one request; no warm-up, so the start is part of what is measured, the same for
every contestant.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from load.bench.backends import Backends
from load.bench.contestants import MAX_OUTSTANDING, Contestant, launch
from load.bench.scenarios import Scenario
from load.loadgen import DEFAULT_BODY, Summary, run_load, tally
from load.procs import Procs, cpu_seconds, proxy_apart, tree_cpu_seconds, wait_for_url


@dataclass(frozen=True)
class Options:
    duration: float  # s of load per contestant
    rate: float | None  # None: the scenario's
    burstiness: float  # 1: Poisson arrivals
    seed: int
    timeout: float  # per request, s, where the scenario sets none
    progress: bool
    out: Path  # logs and configs, a folder per contestant

    def client_timeout(self, s: Scenario) -> float:
        """The load generator's per-request timeout in ``s``: the scenario's, else ours."""
        return self.timeout if s.client_timeout_s is None else s.client_timeout_s


def phases(s: Scenario, summary: Summary, duration: float) -> list[dict[str, Any]]:
    """``tally`` of each stretch between the scenario's actions (none: the whole run)."""
    cuts = [0.0, *(a.at * duration for a in s.actions), float("inf")]
    names = s.phases or ("all",)
    return [
        {"name": name, "from_s": start, **tally(r for r in summary.records if start <= r.at < end)}
        for name, start, end in zip(names, cuts[:-1], cuts[1:], strict=True)
    ]


async def run_contestant(
    s: Scenario, c: Contestant, opts: Options, binaries: dict[str, str]
) -> dict[str, Any]:
    rate = opts.rate or s.rate
    with Procs(log_dir=opts.out / s.name / c.name, grace_s=10) as procs, proxy_apart() as core:
        backends = Backends(procs, s.replicas)
        await backends.start()
        target = launch(c, procs, backends.urls, s.limits, binaries, core)
        try:
            await wait_for_url(target.urls[0], within=60, proc=target.proc, method="POST",
                               body=DEFAULT_BODY)  # fmt: skip
        except RuntimeError as exc:
            raise RuntimeError(f"{c.name}: {exc}; its log and config: {procs.log_dir}") from None
        # CPU seconds of the generator (this process alone) and of the proxy with its
        # children (nginx's worker), to tell a saturated machine from a slow proxy
        meters = {"loadgen": functools.partial(cpu_seconds, os.getpid())}
        if target.proc is not None:
            meters["proxy"] = functools.partial(tree_cpu_seconds, target.proc.pid)
        before = {name: meter() for name, meter in meters.items()}
        start = time.perf_counter()
        actions = asyncio.create_task(backends.play(s.actions, opts.duration, start))
        summary = await run_load(
            target.urls, rate, opts.duration, request_timeout=opts.client_timeout(s),
            max_outstanding=MAX_OUTSTANDING, seed=opts.seed, burstiness=opts.burstiness,
            series=True, progress=opts.progress,
        )  # fmt: skip
        events = await actions
        after = {name: meter() for name, meter in meters.items()}
    cpu = {}
    for name in meters:
        if (end := after[name]) is not None and (begin := before[name]) is not None:
            cpu[name] = end - begin
    return {
        "contestant": c.name, "kind": c.kind, "policy": c.policy, "rate": rate,
        **summary.to_json(), "phases": phases(s, summary, opts.duration), "events": events,
        "cpu_s": cpu, "logs": str(procs.log_dir),
    }  # fmt: skip


async def run_scenario(
    s: Scenario, contestants: list[Contestant], opts: Options, binaries: dict[str, str]
) -> list[dict[str, Any]]:
    runs = []
    for c in contestants:
        print(f"{s.name}: {c.name}", file=sys.stderr, flush=True)
        run = await run_contestant(s, c, opts, binaries)
        lat = run["latency_ms"]
        print(f"  ok {run['ok_rps']:.0f}/s, errors {run['error_count']}, p50 {lat['p50']:.1f} ms,"
              f" p99 {lat['p99']:.1f} ms", file=sys.stderr, flush=True)  # fmt: skip
        runs.append(run)
    return runs
