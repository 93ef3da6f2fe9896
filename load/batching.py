"""The ``batching`` benchmark: the model server with dynamic batching off, then on.

It starts the real model server (``python -m backends.model``, the digits ONNX model) with
``--no-batching``, runs the open-loop load generator at each rate, stops it, then does the
same with batching on, once per ``--waits`` value of ``--max-wait-ms`` (``--waits 2,0``
compares a 2 ms batch window with none, where batches form only from the requests that
arrived while the previous call ran). Each request carries ``--rows`` held-out images.
Besides throughput and latency it reads the server's ``/stats`` before and after each run:
the number of inference calls made, hence the mean rows per call (``--rows`` without
batching), and the CPU share the server used, so that a saturated machine shows as such.

    python -m load.batching --rates 250,500,1000,2000 --waits 2,0 --duration 10 --json out.json

The generator runs in this process, on the same machine as the server; its send lag p99
is printed, since a generator that falls behind its schedule understates the load.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import uvloop

from load.loadgen import run_load
from load.procs import Procs, cpu_seconds, port_is_free, python, wait_for_url, write_report

TEST_SPLIT = Path(__file__).resolve().parent.parent / "backends" / "model" / "digits_test.npz"


def request_body(rows: int) -> bytes:
    """``rows`` held-out digits as one ``/predict`` body (the same body for every request)."""
    images = np.load(TEST_SPLIT)["X"][:rows]
    return orjson.dumps({"inputs": images.astype(np.float64).tolist()})


async def stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/stats") as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def measure(args: argparse.Namespace, url: str, pid: int, rate: float) -> dict[str, Any]:
    """One load run at ``rate``; the server's calls and CPU share during it."""
    before, cpu_before = await stats(url), cpu_seconds(pid)
    summary = await run_load(
        [f"{url}/predict"], rate, args.duration, body=request_body(args.rows),
        request_timeout=args.timeout, seed=int(rate),
    )  # fmt: skip
    after, cpu_after = await stats(url), cpu_seconds(pid)
    calls = after["runs"] - before["runs"]
    rows = after["rows"] - before["rows"]
    cpu = None
    if cpu_before is not None and cpu_after is not None:
        cpu = round((cpu_after - cpu_before) / summary.elapsed_s, 3)
    await asyncio.sleep(args.pause)  # let the server's queue and sockets settle between runs
    return {**summary.to_json(), "calls": calls, "rows_per_call": rows / max(calls, 1),
            "server_cpu": cpu}  # fmt: skip


def modes(args: argparse.Namespace) -> dict[str, list[str]]:
    """Server flags by mode name: ``off``, then batching on with each ``--waits`` value."""
    found = {"off": ["--no-batching"]}
    for wait in args.waits:
        name = "on" if len(args.waits) == 1 else f"on {wait:g}ms"
        found[name] = ["--max-wait-ms", f"{wait:g}"]
    return found


def server_command(args: argparse.Namespace, flags: list[str]) -> list[str]:
    common = ["--port", str(args.port), "--provider", args.provider]
    return python("backends.model", *common, "--max-batch", str(args.max_batch), *flags)


async def bench_mode(
    args: argparse.Namespace, procs: Procs, mode: str, flags: list[str]
) -> dict[str, Any]:
    proc = procs.start("model", server_command(args, flags))
    url = f"http://127.0.0.1:{args.port}"
    await wait_for_url(f"{url}/health", within=120, proc=proc)
    async with aiohttp.ClientSession() as s, s.get(f"{url}/health") as resp:
        provider = (await resp.json())["provider"]
    print(f"batching {mode}: server ready, provider {provider}", flush=True)
    await run_load([f"{url}/predict"], min(args.rates), args.warmup, body=request_body(args.rows))
    runs = []
    for rate in args.rates:
        run = await measure(args, url, proc.pid, rate)
        runs.append(run)
        print(f"  {format_run(run)}", flush=True)
    return {"provider": provider, "runs": runs}


def format_run(r: dict[str, Any]) -> str:
    lat, cpu = r["latency_ms"], r["server_cpu"]
    return (
        f"{r['rate']:>7.0f} rps: ok {r['ok_rps']:8.1f}/s  p50 {lat['p50']:7.2f}  "
        f"p99 {lat['p99']:8.2f} ms  errors {r['error_count']:>5}  rows/call "
        f"{r['rows_per_call']:5.1f}  server cpu {cpu if cpu is None else f'{cpu:.0%}'}  "
        f"lag p99 {r['lag_ms']['p99']:.2f}"
    )


COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [  # (heading, cell of one run)
    ("ok rps", lambda r: f"{r['ok_rps']:.0f}"),
    ("p50 ms", lambda r: f"{r['latency_ms']['p50']:.2f}"),
    ("p99 ms", lambda r: f"{r['latency_ms']['p99']:.2f}"),
    ("rows/call", lambda r: f"{r['rows_per_call']:.1f}"),
    ("errors", lambda r: f"{r['error_count']}"),
    ("server CPU", lambda r: "?" if r["server_cpu"] is None else f"{r['server_cpu']:.0%}"),
]


def table(results: dict[str, Any]) -> str:
    """The modes side by side as a Markdown table, one row per rate; each cell lists the
    modes in order (``off / on``)."""
    names = list(results)
    order = " / ".join(names)
    lines = [
        f"| rate | {' | '.join(f'{heading} {order}' for heading, _ in COLUMNS)} |",
        f"|---:|{'---|' * len(COLUMNS)}",
    ]
    for i, rate in enumerate(run["rate"] for run in results[names[0]]["runs"]):
        runs = [results[name]["runs"][i] for name in names]
        cells = [" / ".join(cell(r) for r in runs) for _, cell in COLUMNS]
        lines.append(f"| {rate:g} | {' | '.join(cells)} |")
    return "\n".join(lines)


async def bench(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for i, (mode, flags) in enumerate(modes(args).items()):
        (log_dir / str(i)).mkdir(parents=True, exist_ok=True)
        with Procs(log_dir / str(i)) as procs:  # one server at a time: they share the CPUs
            try:
                results[mode] = await bench_mode(args, procs, mode, flags)
            except RuntimeError:
                print(procs.log_tail("model"), file=sys.stderr)
                raise
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m load.batching", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rates", default="250,500,1000,2000", help="comma-separated rps")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--rows", type=int, default=1, help="images per request")
    p.add_argument("--max-batch", type=int, default=32, help="server's rows per call")
    p.add_argument("--waits", default="2",
                   help="comma-separated --max-wait-ms values to run batching on with")  # fmt: skip
    p.add_argument("--provider", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--port", type=int, default=18500)
    p.add_argument("--warmup", type=float, default=2.0, help="seconds, per server, not kept")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    p.add_argument("--json", type=Path, help="write every result here")
    args = p.parse_args(argv)
    args.rates = sorted(float(r) for r in args.rates.split(",") if r.strip())
    args.waits = [float(w) for w in args.waits.split(",") if w.strip()]
    if not args.waits or min(args.waits) < 0:
        p.error("--waits: one or more values >= 0")
    if not args.rates or min(args.rates) <= 0 or not 1 <= args.rows <= 450:
        p.error("need positive --rates and 1 <= --rows <= 450")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not port_is_free(args.port):
        print(f"port {args.port} is in use; choose another with --port")
        return 2
    with tempfile.TemporaryDirectory(prefix="batching-") as tmp:
        try:
            results = uvloop.run(bench(args, Path(tmp)))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(table(results))
    if args.json:
        write_report(args.json, vars(args), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
