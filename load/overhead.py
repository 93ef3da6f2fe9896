"""The ``overhead`` benchmark: what the gateway adds to latency, and the rate it sustains.

It starts sim backends (one ``python -m backends.sim --ports ...`` process; fast, wide
replicas so that they are never the bottleneck) and a gateway in front of them, then for
each rate runs the open-loop load generator twice with the same arrivals process: straight
at the backends (round-robin) and through the gateway. The difference is the gateway's
cost. Finally it searches, in coarse steps, the highest rate at which the gateway's p99
stays under a target (10 ms) with no errors.

    python -m load.overhead --rates 250,500,1000,2000 --duration 10 --json out.json

The generator runs in this process; its send lag and the CPU time each process used are
reported too, so that a saturated generator or machine is not mistaken for the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop

from load.loadgen import run_load
from load.procs import (
    Procs,
    cpu_seconds,
    port_is_free,
    python,
    sim_command,
    wait_for_url,
    write_config,
    write_report,
)


def gateway_config(args: argparse.Namespace, backends: list[str]) -> dict[str, Any]:
    pool = {
        "policy": args.policy,
        "backends": backends,
        "max_inflight_per_replica": args.max_inflight,
    }
    return {
        "listen": {"host": "127.0.0.1", "port": args.gateway_port},
        "admin": {"host": "127.0.0.1", "port": args.admin_port},
        "routes": [{"path": "/predict", "pool": "default"}],
        "pools": {"default": pool},
    }


class Bench:
    """The running system: where to send, and how to measure one run."""

    def __init__(self, args: argparse.Namespace, procs: Procs, backends: list[str]) -> None:
        self.args = args
        self.procs = procs
        self.direct = [f"{url}/predict" for url in backends]
        self.gateway = [f"http://127.0.0.1:{args.gateway_port}/predict"]

    async def measure(self, urls: list[str], rate: float, duration: float) -> dict[str, Any]:
        """One load run, with the CPU share each process used during it (1.0 = one core).
        The arrival times depend on the rate only: direct and gateway runs get the same."""
        pids = {name: proc.pid for name, proc in self.procs.procs.items()}
        pids["loadgen"] = os.getpid()
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        summary = await run_load(
            urls, rate, duration, request_timeout=self.args.timeout, seed=int(rate)
        )
        cpu: dict[str, float] = {}
        for name, pid in pids.items():
            after, start = cpu_seconds(pid), before[name]
            if after is not None and start is not None:
                cpu[name] = round((after - start) / summary.elapsed_s, 3)
        await asyncio.sleep(self.args.pause)
        return {**summary.to_json(), "cpu": cpu}

    def passes(self, run: dict[str, Any], rate: float) -> bool:
        """p99 under target and no errors; the send rate only guards against a generator
        that fell far behind (Poisson counts over a few seconds vary by several percent)."""
        return bool(
            run["latency_ms"]["p99"] < self.args.p99_target_ms
            and run["error_count"] == 0
            and run["send_rps"] >= 0.8 * rate
        )


async def bench(args: argparse.Namespace, procs: Procs, backends: list[str]) -> dict[str, Any]:
    b = Bench(args, procs, backends)
    for url in backends:
        await wait_for_url(f"{url}/health", within=30, proc=procs.procs["sim"])
    gateway_url = f"http://127.0.0.1:{args.gateway_port}"
    await wait_for_url(f"{gateway_url}/healthz", within=60, proc=procs.procs["gateway"])
    await wait_for_url(b.gateway[0], within=30, method="POST", body=b"{}")
    print(f"ready: {len(backends)} sim backends, gateway on {gateway_url}", flush=True)

    warm = min(args.rates)
    await run_load(b.direct, warm, args.warmup)
    await run_load(b.gateway, warm, args.warmup)

    rows = []
    print(HEADER, flush=True)
    for rate in args.rates:
        row = {
            "rate": rate,
            "direct": await b.measure(b.direct, rate, args.duration),
            "gateway": await b.measure(b.gateway, rate, args.duration),
        }
        rows.append(row)
        print(format_row(row), flush=True)
    if args.search_steps == 0:
        return {"runs": rows}
    return {"runs": rows, "search": await search(b, args, rows)}


async def search(b: Bench, args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Coarse search for the highest rate the gateway serves under the p99 target: grow by
    ``x1.5`` past the best sweep rate until a run fails, then bisect ``--search-steps``
    times between the last pass and the first failure."""
    passing = [r["rate"] for r in rows if b.passes(r["gateway"], r["rate"])]
    failing = [r["rate"] for r in rows if r["rate"] not in passing]
    low = max(passing, default=0.0)
    high = min((r for r in failing if r > low), default=None)
    probes: list[dict[str, Any]] = []

    async def probe(rate: float) -> bool:
        run = await b.measure(b.gateway, rate, args.search_duration)
        ok = b.passes(run, rate)
        probes.append({"rate": rate, "pass": ok, "gateway": run})
        p99, verdict = run["latency_ms"]["p99"], "pass" if ok else "FAIL"
        print(f"  search {rate:>8.0f} rps: p99 {p99:7.2f} ms, ok {run['ok_rps']:8.1f} rps, "
              f"errors {run['error_count']}: {verdict}", flush=True)  # fmt: skip
        return ok

    print(f"searching the highest rate with gateway p99 < {args.p99_target_ms:g} ms", flush=True)
    while high is None and low > 0 and len(probes) < args.search_steps + 4:
        rate = round(low * 1.5)
        if await probe(rate):
            low = rate
        else:
            high = rate
    for _ in range(args.search_steps):
        if high is None or high - low <= max(50.0, 0.05 * high):
            break
        rate = round((low + high) / 2)
        if await probe(rate):
            low = rate
        else:
            high = rate
    result = {"target_p99_ms": args.p99_target_ms, "max_rate": low, "first_fail": high}
    if low > 0:
        result["direct_at_max"] = await b.measure(b.direct, low, args.search_duration)
        direct_p99 = result["direct_at_max"]["latency_ms"]["p99"]
        print(f"highest rate with gateway p99 < {args.p99_target_ms:g} ms: {low:.0f} rps "
              f"(first failure {high}; direct p99 there {direct_p99:.2f} ms)")  # fmt: skip
    else:
        print(f"no rate tried kept the gateway's p99 under {args.p99_target_ms:g} ms")
    return {**result, "probes": probes}


HEADER = (
    f"{'rate':>7} | {'rps direct':>10} {'gateway':>8} | {'p50 direct':>10} {'gateway':>8} | "
    f"{'p99 direct':>10} {'gateway':>8} | {'+p50 ms':>8} {'+p99 ms':>8} | {'errors d/g':>10} | "
    f"{'gw cpu':>6} {'lag p99':>7}"
)


def format_row(row: dict[str, Any]) -> str:
    d, g = row["direct"], row["gateway"]
    dl, gl = d["latency_ms"], g["latency_ms"]
    errors = f"{d['error_count']}/{g['error_count']}"
    lag = max(d["lag_ms"]["p99"], g["lag_ms"]["p99"])
    cpu = g["cpu"].get("gateway", float("nan"))
    return (
        f"{row['rate']:>7.0f} | {d['ok_rps']:>10.1f} {g['ok_rps']:>8.1f} | "
        f"{dl['p50']:>10.2f} {gl['p50']:>8.2f} | {dl['p99']:>10.2f} {gl['p99']:>8.2f} | "
        f"{gl['p50'] - dl['p50']:>8.2f} {gl['p99'] - dl['p99']:>8.2f} | {errors:>10} | "
        f"{cpu:>6.0%} {lag:>7.2f}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m load.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rates", default="250,500,1000,2000,4000", help="comma-separated rps")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--backends", type=int, default=2, help="sim replicas")
    p.add_argument("--service-ms", type=float, default=1.0, help="sim service time (const)")
    p.add_argument("--slots", type=int, default=64, help="sim slots per replica")
    p.add_argument("--policy", default="least_connections")
    p.add_argument("--max-inflight", type=int, default=64, help="gateway slots per replica")
    p.add_argument("--gateway-port", type=int, default=18080)
    p.add_argument("--admin-port", type=int, default=19090)
    p.add_argument("--sim-port", type=int, default=19001, help="first backend port")
    p.add_argument("--p99-target-ms", type=float, default=10.0)
    p.add_argument("--search-steps", type=int, default=3, help="bisections; 0 = no search")
    p.add_argument("--search-duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=2.0, help="seconds, each path, not kept")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    p.add_argument("--json", type=Path, help="write every result here")
    args = p.parse_args(argv)
    args.rates = sorted(float(r) for r in args.rates.split(",") if r.strip())
    if not args.rates or min(args.rates) <= 0 or args.backends < 1:
        p.error("need positive --rates and --backends >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sim_ports = [args.sim_port + i for i in range(args.backends)]
    busy = [p for p in [*sim_ports, args.gateway_port, args.admin_port] if not port_is_free(p)]
    if busy:
        print(f"ports in use: {busy}; choose others (--sim-port, --gateway-port, ...)")
        return 2
    backends = [f"http://127.0.0.1:{port}" for port in sim_ports]
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp, Procs(Path(tmp)) as procs:
        config = write_config(Path(tmp) / "gateway.yaml", gateway_config(args, backends))
        settings = {"service_ms": args.service_ms, "slots": args.slots, "distribution": "const"}
        procs.start("sim", sim_command(sim_ports, **settings))
        procs.start("gateway", python("gateway", "run", "--config", str(config)))
        try:
            results = uvloop.run(bench(args, procs, backends))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            for name in procs.procs:
                print(f"--- {name} log:\n{procs.log_tail(name)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted; stopping the processes", file=sys.stderr)
            return 130
    if args.json:
        write_report(args.json, vars(args), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
