"""``python -m load.attack``: hostile clients against the gateway, HAProxy and nginx.

For each contestant (the same configs as ``load.bench``: the gateway on its defaults, the
peers with the gateway's timeouts and retries) in front of two sim replicas: a normal
client sends ``POST /predict`` at a steady rate, first alone (the quiet p99), then while
each attack of ``load.attack.hostile`` runs for ``--duration`` s. A row says what the
attacker was answered, how much the proxy's resident memory grew (its peak during the
attack over its level before), and the normal client's p99 and errors meanwhile. Then
``--crosstalk`` requests go one by one through two replicas that over-send
(``load.attack.oversend``), each with its own token: an answer that is not its own 200
carries another exchange's bytes.

    python -m load.attack                     # every attack, all three: about 8 minutes
    python -m load.attack --attacks slowloris --contestants gateway --duration 5
    python -m load.attack --publish           # and write the table into load/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

from gateway.control.drivers import free_port
from load.attack.hostile import ATTACKS
from load.bench import report
from load.bench.contestants import CONTESTANTS, Contestant, Limits, launch
from load.bench.install import ensure
from load.loadgen import run_load
from load.procs import (
    Procs,
    proxy_apart,
    python,
    sim_command,
    tree_rss_bytes,
    wait_for_url,
    write_report,
)

LOAD = Path(__file__).resolve().parents[1]
NAMES = ("gateway-peak_ewma", "haproxy-leastconn", "nginx-least_conn")
LIMITS = Limits(max_inflight=64)  # HAProxy's maxconn: the gateway's default ceiling
# the replicas: 8 slots of 10 ms each, and a stream of 500,000 events (some 10 MB) for
# whoever asks for one, sent as fast as it is read
REPLICA = {"service_ms": 10, "slots": 8, "tokens": 500_000, "token_ms": 0}
RSS_LIMIT_MIB = 64.0  # targets, for the gateway: memory growth under this ...
P99_FACTOR = 2.0  # ... the normal client's p99 at most this x its quiet p99, no errors
SAMPLE_S = 0.1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m load.attack", description=__doc__.split("\n")[0])
    p.add_argument("--attacks", help=f"comma-separated, of: {', '.join(ATTACKS)} (default: all)")
    p.add_argument("--contestants", help="comma-separated: gateway, haproxy, nginx (default: all)")
    p.add_argument("--duration", type=float, default=10.0, help="s per attack")
    p.add_argument("--rate", type=float, default=50.0, help="the normal client's requests/s")
    p.add_argument("--crosstalk", type=int, default=10_000, help="requests via over-senders")
    p.add_argument("--publish", action="store_true", help="write the table into RESULTS.md")
    p.add_argument("--out", type=Path, default=LOAD / "out" / "attack", help="JSON and logs")
    return p.parse_args(argv)


def contestants(spec: str | None) -> list[Contestant]:
    by_kind = {c.kind: c for c in CONTESTANTS if c.name in NAMES}
    kinds = spec.split(",") if spec else list(by_kind)
    unknown = [k for k in kinds if k not in by_kind]
    if unknown:
        raise SystemExit(f"unknown contestants: {', '.join(unknown)}")
    return [by_kind[k] for k in kinds]


async def peak_rss(pid: int, stop: asyncio.Event) -> int:
    """The largest resident memory of ``pid``'s tree until ``stop``."""
    peak = 0
    while not stop.is_set():
        peak = max(peak, tree_rss_bytes(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_S)
    return max(peak, tree_rss_bytes(pid))


async def start(c: Contestant, procs: Procs, replica: list[str], binaries: dict[str, str],
                health: str, core: set[int] | None) -> tuple[str, int]:  # fmt: skip
    """Two replicas from ``replica`` (a command line, ``{port}`` filled in), ``c`` in front
    on ``core``; returns the proxy's port and pid."""
    urls = []
    for i in range(2):
        port = free_port()
        procs.start(f"r{i}", [arg.replace("{port}", str(port)) for arg in replica])
        urls.append(f"http://127.0.0.1:{port}")
        await wait_for_url(f"{urls[-1]}{health}", within=30, proc=procs.procs[f"r{i}"])
    target = launch(c, procs, urls, LIMITS, binaries, core)
    assert target.proc is not None
    await wait_for_url(f"{target.urls[0].removesuffix('/predict')}/health", within=60,
                       proc=target.proc)  # fmt: skip
    return target.urls[0], target.proc.pid


async def attacks(c: Contestant, args: argparse.Namespace, binaries: dict[str, str],
                  names: list[str]) -> list[dict[str, Any]]:  # fmt: skip
    sim = sim_command([0], **REPLICA)
    sim[sim.index("--ports") + 1] = "{port}"
    with Procs(log_dir=args.out / c.name, grace_s=5) as procs, proxy_apart() as core:
        url, pid = await start(c, procs, sim, binaries, "/health", core)
        port = int(url.split(":")[2].split("/")[0])
        quiet = await run_load([url], args.rate, args.duration, seed=1)
        rows = []
        for name in names:
            print(f"{c.name}: {name}", file=sys.stderr)
            before = tree_rss_bytes(pid)
            stop = asyncio.Event()
            sampler = asyncio.ensure_future(peak_rss(pid, stop))
            attack = asyncio.ensure_future(ATTACKS[name]("127.0.0.1", port, args.duration))
            normal = await run_load([url], args.rate, args.duration, seed=2)
            tally = await attack
            stop.set()
            peak = await sampler
            rows.append({
                "attack": name, "contestant": c.name, "answered": dict(tally),
                "rss_growth_mib": max(0, peak - before) / 2**20,
                "p99_ms": normal.latency_ms.get("p99"), "quiet_p99_ms": quiet.latency_ms["p99"],
                "errors": normal.error_count, "error_kinds": normal.errors,
            })  # fmt: skip
            await asyncio.sleep(1.0)  # what the attack left behind settles
    return rows


async def crosstalk(
    c: Contestant, args: argparse.Namespace, binaries: dict[str, str]
) -> dict[str, Any]:
    """``--crosstalk`` requests through over-sending replicas, over two alternating
    keep-alive clients: how many answers were not their own token's 200."""
    command = python("load.attack.oversend", "--port", "{port}")
    with Procs(log_dir=args.out / c.name / "crosstalk", grace_s=5) as procs, proxy_apart() as core:
        url, _ = await start(c, procs, command, binaries, "/health", core)
        foreign = failed = 0
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as a,
            aiohttp.ClientSession(timeout=timeout) as b,
        ):
            for i in range(args.crosstalk):
                token = f"t{i:06d}"
                try:
                    async with (a if i % 2 else b).post(
                        url, data=b"{}", headers={"X-Token": token}, allow_redirects=False
                    ) as resp:
                        body = await resp.read()
                        mine = resp.status == 200 and orjson.loads(body).get("token") == token
                        if not mine and (b"/stolen/" in body or "Location" in resp.headers
                                         or resp.status == 200):  # fmt: skip
                            foreign += 1
                        elif not mine:
                            failed += 1
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    failed += 1
    return {"contestant": c.name, "requests": args.crosstalk, "foreign": foreign, "failed": failed}


def verdict(row: dict[str, Any]) -> str:
    misses = []
    if row["rss_growth_mib"] >= RSS_LIMIT_MIB:
        misses.append(f"RSS +{row['rss_growth_mib']:.0f} MiB")
    p99 = row["p99_ms"]
    if p99 is None or p99 > P99_FACTOR * row["quiet_p99_ms"]:
        misses.append("p99 over 2x quiet")
    if row["errors"]:
        misses.append(f"{row['errors']} errors")
    return "met" if not misses else "missed (" + "; ".join(misses) + ")"


def table(result: dict[str, Any]) -> str:
    lines = [
        "| attack | contestant | answered | RSS growth MiB | normal p99 ms (quiet) "
        "| normal errors | verdict (gateway) |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        answered = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in row["answered"].items())
        p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.1f}"
        mark = verdict(row) if row["contestant"].startswith("gateway") else ""
        lines.append(
            f"| {row['attack']} | {row['contestant']} | {answered} | {row['rss_growth_mib']:.1f} |"
            f" {p99} ({row['quiet_p99_ms']:.1f}) | {row['errors']} | {mark} |"
        )
    lines += [
        "",
        "| contestant | requests via over-senders | answers with another's bytes | failed |",
        "|---|---:|---:|---:|",
    ]
    for ct in result["crosstalk"]:
        lines.append(
            f"| {ct['contestant']} | {ct['requests']} | {ct['foreign']} | {ct['failed']} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    names = args.attacks.split(",") if args.attacks else list(ATTACKS)
    unknown = [n for n in set(names) if n not in ATTACKS]
    if unknown:
        raise SystemExit(f"unknown attacks: {', '.join(unknown)}")
    chosen = contestants(args.contestants)
    binaries = ensure(sorted({c.kind for c in chosen if c.peer}))
    rows, talks = [], []
    for c in chosen:
        rows += await attacks(c, args, binaries, names)
        if args.crosstalk:
            talks.append(await crosstalk(c, args, binaries))
    rows.sort(key=lambda r: (names.index(r["attack"]), r["contestant"]))
    return {"rows": rows, "crosstalk": talks, "machine": report.machine(binaries)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = uvloop.run(run(args))
    write_report(args.out / "attack.json", vars(args) | {"out": str(args.out)}, result)
    text = table(result)
    print(text)
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    if args.publish:
        results = LOAD / "RESULTS.md"
        m = result["machine"]
        head = (f"**Machine**: {m['cores']} vCPUs ({m['cpu']}); Python {m['python']}; the gateway "
                f"at {m['gateway']}; {'; '.join(m['peers'].values())}.\n\n"
                f"```sh\npython -m load.attack --publish\n```\n\n"
                f"{args.duration:g} s per attack, the normal client at {args.rate:g} requests/s "
                f"(Poisson); the proxy's RSS sampled every {SAMPLE_S:g} s.\n\n")  # fmt: skip
        results.write_text(report.replace_section(results.read_text(), "attack", head + text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
