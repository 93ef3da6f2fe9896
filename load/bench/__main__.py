"""``python -m load.bench SCENARIO...``: the gateway against HAProxy and nginx, by scenario.

    python -m load.bench hetero                 # one scenario, every contestant: a table
    python -m load.bench all --publish          # every scenario; plots into load/results/
                                                # and the sections of load/RESULTS.md rewritten
    python -m load.bench failover --duration 5 --contestants gateway-peak_ewma,haproxy-leastconn
    python -m load.bench hetero --json          # the results as JSON on stdout
    python -m load.bench matrix --publish       # the workload matrix (not part of all)
    python -m load.bench matrix --cells const-s4-l30,pareto-s1-l90-slow --duration 5

HAProxy and nginx are installed with apt-get when missing. Every contestant runs in turn
on fresh sim replicas, everything on 127.0.0.1, and everything started is stopped at the
end of each run. Raw results go to ``load/out/bench/SCENARIO.json`` (git-ignored);
``--from-json`` renders tables, plots and RESULTS.md again from them without running
anything. For ``burst`` and ``from-zero`` (the gateway's autoscaler alone) ``--duration``
is the length of a phase: the run takes 4.5 (burst) or 3.75 (from-zero) phases.
``matrix`` runs the gateway's defaults and two peers on each of its cells (15 by default,
each at its own rate: about 25-30 minutes at the default 20 s per contestant).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import orjson
import uvloop

from load import burst
from load.bench import llm, llm_workload, matrix, report, trace
from load.bench.contestants import CONTESTANTS, Limits
from load.bench.install import ensure
from load.bench.plots import plot_llm, plot_ratios, plot_scenario
from load.bench.runner import Options, run_scenario
from load.bench.scenarios import AUTOSCALE, NAMES, SCENARIOS

LOAD = Path(__file__).resolve().parents[1]
RESULTS_MD = LOAD / "RESULTS.md"
FIGURES = LOAD / "results"  # committed, referenced from RESULTS.md


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m load.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("scenarios", nargs="+",
                   choices=[*NAMES, "all", matrix.NAME, *llm.NAMES, trace.NAME],
                   metavar="SCENARIO", help=f"one or more of {', '.join(NAMES)}, or all "
                   "(those); or matrix, the workload matrix, the LLM benchmarks "
                   f"{', '.join(llm.NAMES)}, or {trace.NAME}, the autoscalers over a "
                   "simulated trace (none of them in all)")  # fmt: skip
    p.add_argument("--duration", type=float, default=20.0, help="s of load per contestant")
    p.add_argument("--rate", type=float, help="arrivals per second (default: the scenario's)")
    p.add_argument("--cells", help="matrix: comma-separated cells (default: the 15 defaults)")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="coefficient of variation of the gaps: 1 Poisson, >1 clumps")  # fmt: skip
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=15.0, help="per request, s")
    p.add_argument("--contestants", help="comma-separated names (default: all that apply)")
    p.add_argument("--json", action="store_true", help="print the results as JSON, no table")
    p.add_argument("--publish", action="store_true",
                   help="figures to load/results/, sections of RESULTS.md rewritten")  # fmt: skip
    p.add_argument("--from-json", action="store_true",
                   help="render the last saved results instead of running")  # fmt: skip
    p.add_argument("--out", type=Path, default=LOAD / "out" / "bench", help="JSON and logs")
    args = p.parse_args(argv)
    chosen = [name for s in args.scenarios for name in (NAMES if s == "all" else [s])]
    args.scenarios = list(dict.fromkeys(chosen))
    names = {c.name for c in CONTESTANTS} | set(llm.CONTESTANTS) | set(trace.CONTESTANTS)
    args.only = args.contestants.split(",") if args.contestants else None
    if args.only and not set(args.only) <= names:
        p.error(f"unknown contestants; choose from {', '.join(sorted(names))}")
    in_matrix = {c.name for c in matrix.MATRIX_CONTESTANTS}
    if matrix.NAME in args.scenarios and args.only and not set(args.only) <= in_matrix:
        p.error(f"the matrix's contestants are {', '.join(sorted(in_matrix))}")
    if args.cells and matrix.NAME not in args.scenarios:
        p.error("--cells is for matrix")
    if args.rate and matrix.NAME in args.scenarios:
        p.error("--rate is not for matrix: each cell has its own")
    try:
        args.cells = matrix.parse_cells(args.cells) if args.cells else list(matrix.DEFAULT_CELLS)
    except ValueError as exc:
        p.error(f"--cells: {exc}")
    if not 1 <= args.duration <= 300 or args.burstiness <= 0 or (args.rate or 1) <= 0:
        p.error("need 1 <= --duration <= 300, --burstiness > 0 and --rate > 0")
    return args


def options(args: argparse.Namespace) -> Options:
    return Options(duration=args.duration, rate=args.rate, burstiness=args.burstiness,
                   seed=args.seed, timeout=args.timeout, progress=sys.stderr.isatty(),
                   out=args.out)  # fmt: skip


def run(name: str, args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run scenario ``name``; the result as saved in its JSON."""
    if name == matrix.NAME:
        return run_matrix(args, command)
    if name == trace.NAME:
        result = trace.run(args.seed, args.only)
        return {"scenario": name, "about": trace.ABOUT, "command": command, "trace": result}
    if name in llm.NAMES:
        only = ",".join(args.only) if args.only else None
        haproxy = (
            None if only and "haproxy-roundrobin" not in only else ensure(["haproxy"])["haproxy"]
        )
        runs = llm.main(name, args.duration, args.seed, only, args.out, haproxy, args.rate)
        return {"scenario": name, "about": llm.ABOUT[name], "command": command, "llm": runs,
                "options": {"duration": args.duration, "seed": args.seed, "rate": args.rate},
                "machine": report.machine({})}  # fmt: skip
    if name in AUTOSCALE:
        a = AUTOSCALE[name]
        plan = dataclasses.replace(a.plan(args.duration), seed=args.seed, timeout=args.timeout)
        result = uvloop.run(burst.bench(plan, args.out / name))
        return {"scenario": name, "about": a.about, "command": command,
                "machine": report.machine({}), "result": result}  # fmt: skip
    s = SCENARIOS[name]
    contestants = [c for c in s.contestants() if not args.only or c.name in args.only]
    binaries = ensure(sorted({c.kind for c in contestants if c.peer}))
    opts = options(args)
    runs = uvloop.run(run_scenario(s, contestants, opts, binaries))
    return {
        "scenario": name, "about": s.about, "command": command, "rate": args.rate or s.rate,
        "options": {"duration": opts.duration, "burstiness": opts.burstiness, "seed": opts.seed,
                    "timeout": opts.client_timeout(s)},
        "limits": dataclasses.asdict(s.limits),
        "replicas": [dataclasses.asdict(r) for r in s.replicas],
        "actions": [{"at_s": a.at * args.duration, "action": a.describe()} for a in s.actions],
        "phases": list(s.phases or ("all",)), "watch": s.watch, "target": s.target,
        "machine": report.machine(binaries), "runs": runs,
    }  # fmt: skip


def run_matrix(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run the matrix's cells (logs under ``out/matrix/CELL/``); the result as saved."""
    contestants = [c for c in matrix.MATRIX_CONTESTANTS if not args.only or c.name in args.only]
    binaries = ensure(sorted({c.kind for c in contestants if c.peer}))
    opts = dataclasses.replace(options(args), out=args.out / matrix.NAME)
    cells = uvloop.run(matrix.run(args.cells, contestants, opts, binaries))
    return {
        "scenario": matrix.NAME, "about": matrix.ABOUT, "command": command,
        "options": {"duration": opts.duration, "burstiness": opts.burstiness, "seed": opts.seed,
                    "timeout": opts.timeout},
        "limits": dataclasses.asdict(matrix.LIMITS), "machine": report.machine(binaries),
        "cells": cells,
    }  # fmt: skip


def render(result: dict[str, Any], figure: Path) -> str:
    """Draw the scenario's figure; its table (and verdict) as text."""
    if "trace" in result:
        trace.plot(result["trace"], figure)
        return trace.table(result["trace"])
    if "llm" in result:
        calm_s = llm_workload.SHAPES[result["scenario"]].calm_s
        plot_llm(f"{result['scenario']}: {result['about']}", result["llm"], figure, calm_s)
        return llm.render(result["scenario"], result["llm"])
    if "cells" in result:
        plot_ratios(*matrix.heatmap(result), "p50 and p99 over the best peer's "
                    "(HAProxy leastconn, nginx least_conn); under 1 is better", figure)  # fmt: skip
        return matrix.table(result) + "\n\n" + matrix.summary(result)
    if "runs" in result:
        plot_scenario(result, figure)
        verdict = report.verdict(result)
        return report.table(result) + (
            f"\n\ntarget for {report.GATEWAY}: {verdict}" if verdict else ""
        )
    burst.plot(result["result"], figure)
    return burst.table(result["result"])


def publish(result: dict[str, Any], figure: Path) -> None:
    text = RESULTS_MD.read_text()
    link = figure.relative_to(RESULTS_MD.parent).as_posix()
    if "trace" in result:
        body = trace.section({**result["trace"], "command": result["command"]}, link)
    else:
        section = (
            matrix.section if "cells" in result else llm.section if "llm" in result
            else report.section
        )  # fmt: skip
        body = section(result, link)
    text = report.replace_section(text, result["scenario"], body)
    if "runs" in result:
        text = report.replace_section(
            text, "setup", report.setup_section(Limits(), result["machine"])
        )
    RESULTS_MD.write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    named = [*NAMES, *llm.NAMES, "all", matrix.NAME, trace.NAME]
    flags = [a for a in (sys.argv[1:] if argv is None else argv) if a not in named]
    results, leftovers = [], 0
    for name in args.scenarios:
        saved = args.out / f"{name}.json"
        if args.from_json:
            result = orjson.loads(saved.read_bytes())
        else:
            try:
                result = run(name, args, shlex.join(["python", "-m", "load.bench", name, *flags]))
            except RuntimeError as exc:  # a process that would not start: stopped, as all
                print(f"{name}: {exc}", file=sys.stderr)
                return 1
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_bytes(orjson.dumps(result))
        leftovers += len(result.get("result", {}).get("leftover_pids", []))
        figure = (FIGURES if args.publish else args.out) / f"bench-{name}.png"
        text = render(result, figure)
        if args.publish:
            publish(result, figure)
        if args.json:
            results.append(result)
        else:
            print(f"\n## {name}: {result['about']}\n\n{text}\n\nfigure: {figure}", flush=True)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(results) + b"\n")
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
