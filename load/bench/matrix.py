"""The workload matrix (``python -m load.bench matrix``): workloads the gateway was not tuned for.

The scenarios each stage one failure on replicas with tight, constant service times. A cell
of the matrix varies the workload instead: the service-time distribution, the slots per
replica, the load as a share of the capacity, and whether one replica is slow. The cells
cover every value of every dimension around one base cell (lognormal sigma 0.5, 4 slots,
70 %, no slow replica), not every combination. Both gateway contestants run its defaults
(``gateway_config`` sets no per-replica limit and no hedging), so a cell shows what a user
who tuned nothing gets, against HAProxy and nginx with least-connections balancing.

Everything but running the cells is pure: names, rates, the p99 floor, verdicts, the table.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backends.sim.server import BIMODAL_SHORT, DISTRIBUTIONS, PARETO_ALPHA, PARETO_SCALE
from load.bench import report
from load.bench.contestants import CONTESTANTS, Contestant, Limits
from load.bench.runner import Options, run_scenario
from load.bench.scenarios import Replica, Scenario

NAME = "matrix"
ABOUT = (
    "the gateway's defaults on workloads it was not tuned for (service-time distributions, "
    "slots per replica, load, one slow replica) against HAProxy and nginx"
)
REPLICAS = 4
# HAProxy's maxconn per server: the ceiling of the gateway's default per-replica limit
PEER_MAXCONN = 64
LIMITS = Limits(max_inflight=PEER_MAXCONN)
SLOWDOWN = 5.0  # r0's service times in a slow cell
BASE_SERVICE_MS = 20.0  # the mean service time up to 4 slots
Z99 = 2.3263  # the standard normal's 99th percentile
TOLERANCE = 1.05  # the gateway's p50 and p99 at most this x the best peer's
SLOW_PEER_SHARE = 0.5  # in a slow cell, p99 at most this x the best peer's ...
SLOW_FLOOR = 1.25  # ... or this x a healthy replica's own p99 service time, the larger
GATEWAY = report.GATEWAY  # the default policy, peak_ewma: the targets are about it
_BY_NAME = {c.name: c for c in CONTESTANTS}
MATRIX_CONTESTANTS = tuple(
    _BY_NAME[name]
    for name in (GATEWAY, "gateway-least_connections", "haproxy-leastconn", "nginx-least_conn")
)
HEATMAP = (GATEWAY, "gateway-least_connections")  # each as ratios to the best peer
PEER_KINDS = ("haproxy", "nginx")

Run = dict[str, Any]


@dataclass(frozen=True)
class Cell:
    """One workload: 4 replicas of ``slots`` slots, offered ``load_pct`` % of what the
    healthy ones serve at full use; in a ``slow`` cell r0 takes 5x as long."""

    distribution: str  # of the service times: backends.sim.server.DISTRIBUTIONS
    slots: int
    load_pct: int
    slow: bool = False
    sigma: float = 0.5  # lognormal only

    @property
    def name(self) -> str:
        d = self.distribution
        kind = f"{d}{self.sigma:.1f}" if d == "lognormal" else d
        return f"{kind}-s{self.slots}-l{self.load_pct}" + ("-slow" if self.slow else "")

    @property
    def service_ms(self) -> float:
        """The mean; longer with more than 4 slots, so that the rate stays one that a
        2-core machine drives along with the replicas and the proxy."""
        return BASE_SERVICE_MS * max(1.0, self.slots / 4)

    @property
    def rate(self) -> float:
        """Arrivals per second: the load times the healthy replicas' capacity, so that
        avoiding a slow r0 is always possible."""
        healthy = REPLICAS - self.slow
        return self.load_pct / 100 * healthy * self.slots / (self.service_ms / 1000)

    @property
    def service_p99_ms(self) -> float:
        """A healthy replica's own p99 service time, a floor no balancing goes under."""
        factors: dict[str, float] = {
            "const": 1.0,
            "exp": math.log(100),
            "lognormal": math.exp(Z99 * self.sigma - self.sigma**2 / 2),
            "bimodal": 10 * BIMODAL_SHORT,  # 10 % of requests are long: p99 is one of them
            "pareto": PARETO_SCALE * 100 ** (1 / PARETO_ALPHA),
        }
        return self.service_ms * factors[self.distribution]

    def scenario(self) -> Scenario:
        healthy = Replica(service_ms=self.service_ms, slots=self.slots,
                          distribution=self.distribution, sigma=self.sigma)  # fmt: skip
        r0 = dataclasses.replace(healthy, slowdown=SLOWDOWN) if self.slow else healthy
        about = f"{self.name}: {self.service_ms:g} ms mean, {self.rate:g} rps"
        return Scenario(self.name, about, (r0,) + (healthy,) * (REPLICAS - 1), rate=self.rate,
                        limits=LIMITS, watch=self.slow)  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """The cell as saved with its runs, its derived figures included."""
        return {"cell": self.name, **dataclasses.asdict(self), "service_ms": self.service_ms,
                "rate": self.rate, "service_p99_ms": self.service_p99_ms}  # fmt: skip


_NAME = re.compile(r"([a-z]+)(\d+\.\d)?-s(\d+)-l(\d+)(-slow)?")
SYNTAX = "DIST-sSLOTS-lLOAD[-slow], DIST one of const, exp, lognormalSIGMA, bimodal, pareto"


def parse(name: str) -> Cell:
    """The cell ``name`` stands for (``lognormal0.5-s4-l70-slow``); ValueError if none."""
    m = _NAME.fullmatch(name)
    if m is None or m[1] not in DISTRIBUTIONS or (m[2] is None) == (m[1] == "lognormal"):
        raise ValueError(f"{name}: not a cell ({SYNTAX})")
    cell = Cell(m[1], int(m[3]), int(m[4]), m[5] is not None, float(m[2] or 0.5))
    if cell.slots < 1 or not 0 < cell.load_pct <= 100:
        raise ValueError(f"{name}: needs slots >= 1 and a load of 1 to 100 %")
    if cell.name != name:
        raise ValueError(f"{name}: spelled {cell.name}")
    return cell


DEFAULT_CELLS = tuple(
    parse(name)
    for name in (
        *(f"{d}-s4-l70" for d in ("const", "exp", "lognormal0.5", "lognormal1.0")),
        "bimodal-s4-l70", "pareto-s4-l70",  # the distributions
        "lognormal0.5-s1-l70", "lognormal0.5-s16-l70",  # slots
        "lognormal0.5-s4-l30", "lognormal0.5-s4-l90", "exp-s1-l90",  # load
        "lognormal0.5-s4-l70-slow", "const-s4-l70-slow", "pareto-s1-l90-slow",  # one slow
        "bimodal-s16-l30-slow",
    )
)  # fmt: skip


def parse_cells(names: str) -> list[Cell]:
    """``--cells``: comma-separated names; ValueError naming the default ones if one is bad."""
    try:
        return [parse(name) for name in dict.fromkeys(names.split(","))]
    except ValueError as exc:
        known = ", ".join(c.name for c in DEFAULT_CELLS)
        raise ValueError(f"{exc}; the default cells: {known}") from None


async def run(
    cells: Sequence[Cell], contestants: list[Contestant], opts: Options, binaries: dict[str, str]
) -> list[dict[str, Any]]:
    """Every contestant on every cell, in turn; each cell as ``Cell.describe`` with its runs."""
    done: list[dict[str, Any]] = []
    began = time.monotonic()
    for i, cell in enumerate(cells, 1):
        elapsed = time.monotonic() - began
        print(f"[{i}/{len(cells)}] {cell.name}: {cell.rate:g} rps ({elapsed:.0f} s so far)",
              file=sys.stderr, flush=True)  # fmt: skip
        runs = await run_scenario(cell.scenario(), contestants, opts, binaries)
        done.append({**cell.describe(), "runs": runs})
    return done


def _find(runs: list[Run], name: str) -> Run | None:
    return next((r for r in runs if r["contestant"] == name), None)


def best_peer(runs: list[Run]) -> tuple[float, float] | None:
    """The lowest p50 and the lowest p99 among the peers that answered (None: no peer)."""
    peers = [r["latency_ms"] for r in runs if r["kind"] in PEER_KINDS and r["ok"]]
    if not peers:
        return None
    return min(lat["p50"] for lat in peers), min(lat["p99"] for lat in peers)


def ratios(runs: list[Run], name: str) -> tuple[float, float] | None:
    """Contestant ``name``'s p50 and p99 over the best peer's (None: it or the peers missing)."""
    run, best = _find(runs, name), best_peer(runs)
    if run is None or best is None:
        return None
    return run["latency_ms"]["p50"] / best[0], run["latency_ms"]["p99"] / best[1]


def verdict(runs: list[Run], slow: bool, service_p99_ms: float) -> str | None:
    """``met``, or ``missed (...)`` naming the targets the gateway's default missed; None
    when it or every peer is missing from ``runs``."""
    gw, best = _find(runs, GATEWAY), best_peer(runs)
    if gw is None or best is None:
        return None
    p50, p99 = gw["latency_ms"]["p50"], gw["latency_ms"]["p99"]
    pairs = (("p50", p50, best[0]), ("p99", p99, best[1]))
    missed = [f"{q} {v / b:.2f}x the best peer's" for q, v, b in pairs if v > TOLERANCE * b]
    limit = max(SLOW_PEER_SHARE * best[1], SLOW_FLOOR * service_p99_ms)
    if slow and p99 > limit:
        missed.append(f"p99 {report.ms(p99)} > {report.ms(limit)} ms with r0 slow")
    clean = [r["contestant"] for r in runs if r["kind"] in PEER_KINDS and not r["error_count"]]
    if gw["error_count"] and clean:
        missed.append(f"{gw['error_count']} errors where {clean[0]} had none")
    return f"missed ({'; '.join(missed)})" if missed else "met"


def _verdict(cell: dict[str, Any]) -> str | None:
    return verdict(cell["runs"], cell["slow"], cell["service_p99_ms"])


def table(result: dict[str, Any]) -> str:
    """A row per cell: its rate, each contestant's p50 / p99 and errors, the gateway
    default's ratios to the best peer, and its verdict."""
    names = list(dict.fromkeys(r["contestant"] for c in result["cells"] for r in c["runs"]))
    head = ["cell", "rps", *(f"{n} p50 / p99 ms, errors" for n in names),
            f"{GATEWAY} p50 / p99 x best peer", "verdict"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|---:" + "|---:" * (len(names) + 1) + "|---|"]
    for cell in result["cells"]:
        runs = cell["runs"]
        row = [cell["cell"], f"{cell['rate']:.0f}"]
        row += [_latencies(_find(runs, name)) for name in names]
        rel = ratios(runs, GATEWAY)
        row.append(f"{rel[0]:.2f} / {rel[1]:.2f}" if rel else "-")
        row.append(_verdict(cell) or "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _latencies(run: Run | None) -> str:
    if run is None:
        return "-"
    lat = run["latency_ms"]
    return f"{report.ms(lat['p50'])} / {report.ms(lat['p99'])}, {run['error_count']}"


def summary(result: dict[str, Any]) -> str:
    verdicts = [v for v in map(_verdict, result["cells"]) if v is not None]
    met = verdicts.count("met")
    return f"Targets for {GATEWAY} met in **{met} / {len(verdicts)}** cells."


def heatmap(result: dict[str, Any]) -> tuple[list[str], list[str], list[list[float | None]]]:
    """Rows (cells), columns and values of the heat map: the p50 and p99 of each of
    ``HEATMAP`` over the best peer's."""
    columns = [f"{name.removeprefix('gateway-')}\n{q}" for name in HEATMAP for q in ("p50", "p99")]
    values = []
    for cell in result["cells"]:
        row: list[float | None] = []
        for name in HEATMAP:
            rel = ratios(cell["runs"], name)
            row += list(rel) if rel else [None, None]
        values.append(row)
    return [c["cell"] for c in result["cells"]], columns, values


def section(result: dict[str, Any], plot: str | None) -> str:
    """The matrix's section of RESULTS.md (the prose about it stays above its markers)."""
    lines = [f"**Machine**: {report.describe_machine(result['machine'])}.", "",
             f"```sh\n{result['command']}\n```", "",
             f"{result['options']['duration']:g} s per contestant and cell at the cell's rate "
             f"{report.describe_settings(result)} Errors: any answer that is not a 2xx, and "
             "any request without one.", "",
             table(result), "", summary(result), ""]  # fmt: skip
    if plot:
        lines.append(f"![matrix: p50 and p99 of the gateway over the best peer's]({plot})")
    return "\n".join(lines)
