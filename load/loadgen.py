"""An open-loop load generator: arrivals at a fixed mean rate, whatever the answers do.

A closed loop (N workers, each waiting for its answer) slows down when the server does,
and so hides queueing: the "coordinated omission" problem. Here arrival times are drawn
up front on an absolute schedule (exponential gaps, mean ``1/rate``); each request is its
own task, so a slow answer never delays the next send. Nothing the server does can hold
a send back, so ``latency`` is measured from the moment the request was sent; how late
sends went out against their schedule (timer granularity, a busy generator) is ``lag``,
and ``sched_latency`` measures from the scheduled time, lag included. A large lag means
the generator, not the server, is the bottleneck.

Arrivals are a Poisson process by default; ``burstiness`` (the coefficient of variation
of the gaps, 1 for Poisson) draws Gamma-distributed gaps with the same mean instead, so
that traffic can come in clumps (above 1) or more evenly (below 1) at the same rate.

Outstanding requests are capped (``max_outstanding``): an arrival over the cap is not
delayed but counted as a ``dropped`` error. The run ends after ``duration`` seconds or
``max_requests`` sends, then waits for the answers still out (each bounded by a timeout).
Every request is kept as a ``Record`` (its scheduled time, outcome, latency and the
replica named by the answer's ``X-Replica`` header), from which ``time_series`` makes
per-second figures and callers cut phases.

    python -m load.loadgen --url http://127.0.0.1:8080/predict --rate 500 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
DEFAULT_BODY = b'{"inputs": [1, 2, 3]}'
REPLICA_HEADER = "X-Replica"  # set by backends.sim and backends.model, passed on by proxies


@dataclass(slots=True)
class Record:
    """One arrival: ``at`` is its scheduled time in s from the start of the run."""

    at: float
    outcome: str  # "ok", an error kind, or "http_<status>"
    latency: float | None = None  # s from the send, for 2xx answers only
    replica: str | None = None  # the answer's X-Replica header, if any


@dataclass
class Summary:
    """What one run did. Latencies in ms, over successful (2xx) answers only."""

    urls: list[str]
    rate: float  # target arrivals per second
    duration_s: float  # target length of the sending phase
    sent: int = 0  # requests started (dropped arrivals excluded)
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # kind or "http_<status>" -> count
    send_rps: float = 0.0  # sends per second over the sending phase
    ok_rps: float = 0.0  # 2xx answers per second, from the start to the last answer
    elapsed_s: float = 0.0  # start to last answer
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, ..., max, mean
    sched_latency_ms: dict[str, float] = field(default_factory=dict)  # from scheduled time
    lag_ms: dict[str, float] = field(default_factory=dict)  # send time minus scheduled time
    burstiness: float = 1.0  # coefficient of variation of the gaps between arrivals
    replicas: dict[str, int] = field(default_factory=dict)  # answers per X-Replica
    series: list[dict[str, Any]] = field(default_factory=list)  # per second, if asked for
    records: list[Record] = field(default_factory=list, repr=False)  # not in to_json

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del data["records"]  # raw, and large: callers cut phases from them instead
        return {**data, "error_count": self.error_count}


def percentile(ordered: Sequence[float], p: float) -> float:
    """Exact nearest-rank percentile of an already sorted sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def distribution(samples: list[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9, max and mean of ``samples`` (seconds), in ms."""
    ordered = sorted(samples)
    stats = {f"p{p:g}": percentile(ordered, p) * 1000 for p in PERCENTILES}
    stats["max"] = ordered[-1] * 1000 if ordered else 0.0
    stats["mean"] = sum(ordered) / len(ordered) * 1000 if ordered else 0.0
    return stats


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return "disconnect"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload"
    return type(exc).__name__


def interarrival(rng: random.Random, rate: float, burstiness: float = 1.0) -> float:
    """One gap between arrivals, mean ``1/rate``: exponential (a Poisson process) at
    ``burstiness`` 1, else Gamma with that coefficient of variation. Gamma keeps the mean
    and only spreads the gaps: above 1 many short gaps and a few long ones (clumps)."""
    if burstiness == 1.0:
        return rng.expovariate(rate)  # the same draws as before Gamma existed
    shape = 1.0 / (burstiness * burstiness)
    return rng.gammavariate(shape, 1.0 / (rate * shape))


def tally(records: Iterable[Record]) -> dict[str, Any]:
    """Arrivals, 2xx answers, errors by kind, the latency distribution of the 2xx answers
    (ms) and answers per replica, of ``records``."""
    latencies, errors, replicas = [], Counter[str](), Counter[str]()
    arrivals = 0
    for r in records:
        arrivals += 1
        if r.latency is not None:
            latencies.append(r.latency)
        else:
            errors[r.outcome] += 1
        if r.replica is not None:
            replicas[r.replica] += 1
    return {
        "arrivals": arrivals,
        "ok": len(latencies),
        "errors": dict(sorted(errors.items())),
        "latency_ms": distribution(latencies),
        "replicas": dict(sorted(replicas.items())),
    }


def time_series(records: Sequence[Record], seconds: int) -> list[dict[str, Any]]:
    """``tally`` per second of the schedule: a request counts in the second it was due."""
    buckets: list[list[Record]] = [[] for _ in range(max(seconds, 1))]
    for r in records:
        buckets[min(max(int(r.at), 0), len(buckets) - 1)].append(r)
    return [{"t": t, **tally(bucket)} for t, bucket in enumerate(buckets)]


async def show_progress(
    start: float, duration: float, records: list[Record], outstanding: set[Any]
) -> None:
    """A one-line progress bar on stderr, redrawn until cancelled."""
    width = 30
    while True:
        elapsed = time.perf_counter() - start
        done = min(elapsed / duration, 1.0)
        bar = "#" * round(done * width)
        errors = sum(r.outcome != "ok" for r in records)
        print(f"\r  [{bar:<{width}}] {min(elapsed, duration):5.1f}/{duration:g} s  "
              f"answered {len(records):>7}  errors {errors:>6}  out {len(outstanding):>5}",
              end="", file=sys.stderr, flush=True)  # fmt: skip
        await asyncio.sleep(0.5)


async def run_load(
    urls: Sequence[str],
    rate: float,
    duration: float,
    *,
    body: bytes = DEFAULT_BODY,
    headers: dict[str, str] | None = None,
    request_timeout: float = 30.0,
    max_requests: int | None = None,
    max_outstanding: int = 10_000,
    seed: int | None = None,
    burstiness: float = 1.0,
    series: bool = False,
    progress: bool = False,
) -> Summary:
    """Send arrivals at ``rate``/s for ``duration`` s, round-robin over ``urls``; with
    ``series`` the summary has per-second figures, with ``progress`` a bar is drawn."""
    if rate <= 0 or duration <= 0 or burstiness <= 0 or not urls:
        raise ValueError("need urls, rate > 0, duration > 0 and burstiness > 0")
    rng = random.Random(seed)
    headers = {"Content-Type": "application/json", **(headers or {})}
    limit = max_requests if max_requests is not None else sys.maxsize
    records: list[Record] = []
    sched_latencies: list[float] = []
    lags: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    clock = time.perf_counter  # uvloop's clock() ticks in whole milliseconds
    connector = aiohttp.TCPConnector(limit=max_outstanding, limit_per_host=0, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=request_timeout)

    async def one(session: aiohttp.ClientSession, url: str, scheduled: float) -> None:
        sent_at = clock()
        lags.append(sent_at - scheduled)
        record = Record(scheduled - start, "ok")
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                status = resp.status
                record.replica = resp.headers.get(REPLICA_HEADER)
        except asyncio.CancelledError:  # still out when the run ended
            record.outcome = "unfinished"
            raise
        except Exception as exc:
            record.outcome = error_kind(exc)
        else:
            if 200 <= status < 300:
                done = clock()
                record.latency = done - sent_at
                sched_latencies.append(done - scheduled)
            else:
                record.outcome = f"http_{status}"
        finally:
            records.append(record)

    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        start = clock()
        end = start + duration
        bar = None
        if progress:
            bar = asyncio.create_task(show_progress(start, duration, records, tasks))
        targets = itertools.cycle(urls)
        sent = 0
        scheduled = start + interarrival(rng, rate, burstiness)
        while scheduled < end and sent < limit:
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            # launch every arrival that is due by now: sleeps are coarser than the gaps
            now = clock()
            while scheduled <= now and scheduled < end and sent < limit:
                if len(tasks) >= max_outstanding:
                    records.append(Record(scheduled - start, "dropped"))
                else:
                    task = asyncio.create_task(one(session, next(targets), scheduled))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    sent += 1
                scheduled += interarrival(rng, rate, burstiness)
        send_phase = max(clock() - start, 1e-9)
        if tasks:  # every request is bounded by its timeout; the margin is for slow closes
            await asyncio.wait(set(tasks), timeout=request_timeout + 5)
        elapsed = clock() - start
        if tasks:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if bar is not None:
            bar.cancel()
            print(file=sys.stderr)
    records.sort(key=lambda r: r.at)  # schedule order; they were kept as they ended
    total = tally(records)
    return Summary(
        urls=list(urls),
        rate=rate,
        duration_s=duration,
        sent=sent,
        ok=total["ok"],
        errors=total["errors"],
        send_rps=sent / send_phase,
        ok_rps=total["ok"] / elapsed,
        elapsed_s=elapsed,
        latency_ms=total["latency_ms"],
        sched_latency_ms=distribution(sched_latencies),
        lag_ms=distribution(lags),
        burstiness=burstiness,
        replicas=total["replicas"],
        series=time_series(records, math.ceil(duration)) if series else [],
        records=records,
    )


def format_summary(s: Summary) -> str:
    """A small human-readable table of one run."""
    lat, sched, lag = s.latency_ms, s.sched_latency_ms, s.lag_ms
    errors = ", ".join(f"{kind}={n}" for kind, n in s.errors.items()) or "none"
    rows = [
        ("target", f"{s.rate:g} rps for {s.duration_s:g} s -> {', '.join(s.urls)}"),
        ("sent", f"{s.sent}  ({s.send_rps:.1f} rps)"),
        ("ok", f"{s.ok}  ({s.ok_rps:.1f} rps over {s.elapsed_s:.2f} s)"),
        ("errors", f"{s.error_count}  ({errors})"),
        ("latency ms", "  ".join(f"{k} {lat[k]:.2f}" for k in ("p50", "p90", "p99", "p99.9"))),
        ("", f"max {lat['max']:.2f}  mean {lat['mean']:.2f}"),
        ("from sched", f"p50 {sched['p50']:.2f}  p99 {sched['p99']:.2f}  max {sched['max']:.2f}"),
        ("send lag ms", f"p50 {lag['p50']:.2f}  p99 {lag['p99']:.2f}  max {lag['max']:.2f}"),
    ]
    return "\n".join(f"{name:>12}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.loadgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--url", help="target URL")
    p.add_argument("--urls", help="comma-separated targets, used round-robin")
    p.add_argument("--rate", type=float, default=100.0, help="arrivals per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    p.add_argument("--body", default=DEFAULT_BODY.decode(), help="request body (POST)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s")
    p.add_argument("--max-requests", type=int, help="stop after this many sends")
    p.add_argument("--max-outstanding", type=int, default=10_000)
    p.add_argument("--seed", type=int)
    p.add_argument("--burstiness", type=float, default=1.0, help="coefficient of variation "
                   "of the gaps: 1 Poisson, >1 clumps (Gamma)")  # fmt: skip
    p.add_argument("--progress", action="store_true", help="draw a progress bar on stderr")
    p.add_argument("--json", type=Path, help="write the summary here")
    args = p.parse_args(argv)
    urls = [u for u in (args.urls or args.url or "").split(",") if u]
    if not urls:
        p.error("give --url or --urls")
    summary = uvloop.run(
        run_load(
            urls, args.rate, args.duration, body=args.body.encode(), request_timeout=args.timeout,
            max_requests=args.max_requests, max_outstanding=args.max_outstanding,
            seed=args.seed, burstiness=args.burstiness, progress=args.progress,
        )
    )  # fmt: skip
    print(format_summary(summary))
    if args.json:
        args.json.write_bytes(orjson.dumps(summary.to_json(), option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
