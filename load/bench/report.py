"""Tables, target verdicts and the generated sections of load/RESULTS.md.

RESULTS.md mixes hand-written text with sections the suite writes. A generated section
sits between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->``; rewriting one
replaces only what is between its markers (a new one is appended at the end), so the
prose around it stays as written.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from load.bench.contestants import Limits
from load.burst import table as burst_table

Run = dict[str, Any]
GATEWAY = "gateway-peak_ewma"  # the contestant the targets are about


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with section ``name`` holding ``body``: replaced in place, or appended."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return f"{text.rstrip()}\n\n{block}\n"


def machine(binaries: dict[str, str]) -> dict[str, Any]:
    """What the numbers were measured on."""
    model = next(
        (line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
         if line.startswith("model name")), platform.processor() or "unknown CPU",
    )  # fmt: skip
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal")), 0)  # fmt: skip
    versions = {}
    for name, path in binaries.items():
        out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
        versions[name] = (out.stdout + out.stderr).split(" - ")[0].strip()  # no URL
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "gateway": gateway_version(), "peers": versions}  # fmt: skip


def gateway_version() -> str:
    """The commit the gateway ran from, and whether gateway/ differed from it."""
    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    return commit + (
        " with uncommitted changes in gateway/" if git("status", "--porcelain", "gateway") else ""
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def describe_machine(m: dict[str, Any]) -> str:
    hardware = f"{m['cores']} vCPUs ({m['cpu']}), {m['memory_gib']} GiB RAM"
    gateway = f"the gateway at {m.get('gateway', 'an unknown commit')}"
    return "; ".join([hardware, f"Python {m['python']}", gateway, *m["peers"].values()])


def ms(v: float) -> str:
    """A latency in ms, to a tenth under 100."""
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _errors(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    kinds = ", ".join(f"{kind} {n}" for kind, n in counts.items())
    return f"{total} ({kinds})" if total else "0"


def _share(replicas: dict[str, int], name: str = "r0") -> str:
    total = sum(replicas.values())
    return f"{replicas.get(name, 0) / total:.1%}" if total else "-"


def _cpu(run: Run, name: str) -> float | None:
    seconds = run["cpu_s"].get(name)
    return None if seconds is None else seconds / run["elapsed_s"]


def per_core(run: Run) -> float | None:
    """2xx answers per CPU-second of the proxy: its throughput if it had one core."""
    seconds = run["cpu_s"].get("proxy")
    return run["ok"] / seconds if seconds else None


Column = tuple[str, Callable[[Run], str]]


def _columns(result: dict[str, Any]) -> list[Column]:
    """The table's columns: the general ones, then those that apply to the scenario."""
    runs, phases = result["runs"], result["phases"]
    by_phase = " / ".join(phases)

    def phased(cell: Callable[[dict[str, Any]], str]) -> Callable[[Run], str]:
        return lambda r: " / ".join(cell(p) for p in r["phases"])

    def name(r: Run) -> str:
        return f"**{r['contestant']}**" if r["contestant"] == GATEWAY else r["contestant"]

    cols: list[Column] = [
        ("contestant", name),
        ("ok rps", lambda r: f"{r['ok_rps']:.0f}"),
        ("errors", lambda r: _errors(r["errors"])),
    ]
    cols += [(f"{q} ms", _latency(q)) for q in ("p50", "p90", "p99", "p99.9")]
    if len(phases) > 1:
        cols.append((f"p99 ms: {by_phase}", phased(lambda p: ms(p["latency_ms"]["p99"]))))
        cols.append((f"errors: {by_phase}", phased(lambda p: str(sum(p["errors"].values())))))
    if result["watch"]:
        label = f"r0 share: {by_phase}" if len(phases) > 1 else "r0 share"
        cols.append((label, phased(lambda p: _share(p["replicas"]))))
    direct = next((r for r in runs if r["kind"] == "direct"), None)
    if direct is not None:
        cols.append(("added p50 / p99 ms", lambda r: _added(r, direct)))
    cols.append(("proxy CPU", lambda r: _fmt(_cpu(r, "proxy"), "{:.0%}")))
    if result["target"] == "throughput":
        haproxy = max((per_core(r) or 0.0 for r in runs if r["kind"] == "haproxy"), default=0.0)
        cols.append(("rps per core", lambda r: _fmt(per_core(r), "{:.0f}")))
        if haproxy:  # none when --contestants leaves HAProxy out
            cols.append(
                ("x HAProxy", lambda r: _fmt((per_core(r) or 0) / haproxy or None, "{:.2f}"))
            )
    return cols


def _latency(q: str) -> Callable[[Run], str]:
    return lambda r: ms(r["latency_ms"][q])


def _added(run: Run, direct: Run) -> str:
    if run is direct:
        return "-"
    lat, base = run["latency_ms"], direct["latency_ms"]
    return f"{lat['p50'] - base['p50']:+.2f} / {lat['p99'] - base['p99']:+.2f}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def table(result: dict[str, Any]) -> str:
    """The Markdown table of a scenario's runs, one row per contestant."""
    cols = _columns(result)
    lines = ["| " + " | ".join(title for title, _ in cols) + " |"]
    lines.append("|---" + "|---:" * (len(cols) - 1) + "|")
    lines += ["| " + " | ".join(cell(r) for _, cell in cols) + " |" for r in result["runs"]]
    return "\n".join(lines)


def verdict(result: dict[str, Any]) -> str | None:
    """Whether the gateway with peak_ewma met the scenario's target, with the numbers."""
    target, runs = result["target"], result["runs"]
    gw = next((r for r in runs if r["contestant"] == GATEWAY), None)
    peers = [r for r in runs if r["kind"] in ("haproxy", "nginx")]
    if target is None or gw is None or not peers:
        return None
    if target == "p99":
        best = min(peers, key=lambda r: r["latency_ms"]["p99"])
        limit = best["latency_ms"]["p99"] / 2
        met = gw["latency_ms"]["p99"] <= limit
        return (f"p99 at most half the best peer's ({best['contestant']} "
                f"{ms(best['latency_ms']['p99'])} ms, so <= {ms(limit)} ms): "
                f"{ms(gw['latency_ms']['p99'])} ms, **{'met' if met else 'missed'}**")  # fmt: skip
    if target == "errors":
        fewest = min(peers, key=lambda r: r["error_count"])
        met = gw["error_count"] < fewest["error_count"]
        return (f"fewer client errors than every peer (fewest: {fewest['contestant']}, "
                f"{fewest['error_count']}): {gw['error_count']}, "
                f"**{'met' if met else 'missed'}**")  # fmt: skip
    ha = [r for r in peers if r["kind"] == "haproxy" and per_core(r)]
    if not ha or not per_core(gw):
        return None
    best = max(ha, key=lambda r: per_core(r) or 0)
    ratio = (per_core(gw) or 0) / (per_core(best) or 1)
    return (f"throughput on one core (2xx answers per CPU-second of the proxy): "
            f"{per_core(gw):.0f} against {best['contestant']}'s {per_core(best):.0f}, "
            f"a ratio of **{ratio:.2f}**")  # fmt: skip


def describe_run(result: dict[str, Any]) -> str:
    return f"{result['options']['duration']:g} s per contestant at {result['rate']:g} rps " + (
        describe_settings(result)
    )


def describe_settings(result: dict[str, Any]) -> str:
    """The arrivals and limits every contestant of a run met, and what the latencies are."""
    o, lim = result["options"], result["limits"]
    arrivals = "Poisson" if o["burstiness"] == 1 else f"Gamma, burstiness {o['burstiness']:g}"
    return (f"({arrivals} arrivals, seed {o['seed']}, the same for every contestant); HAProxy "
            f"maxconn {lim['max_inflight']} per server (the gateway: its defaults), response "
            f"timeout {lim['response_s']:g} s, client timeout {o['timeout']:g} s; latencies "
            f"of 2xx answers, from the send, in ms.")  # fmt: skip


def section(result: dict[str, Any], plot: str | None) -> str:
    """A scenario's section of RESULTS.md."""
    lines = [f"### {result['scenario']}", "", result["about"] + ".", "",
             f"```sh\n{result['command']}\n```", ""]  # fmt: skip
    if "runs" in result:
        lines += [describe_run(result), "", table(result), ""]
        if actions := ", ".join(f"{a['action']} at {a['at_s']:g} s" for a in result["actions"]):
            lines += [f"Actions: {actions}.", ""]
        if v := verdict(result):
            lines += [f"Target for {GATEWAY}: {v}.", ""]
    else:
        lines += [burst_table(result["result"]), ""]
    if plot:
        what = "latency, errors and r0's share" if "runs" in result else "rate, p99 and replicas"
        lines.append(f"![{result['scenario']}: {what} per second]({plot})")
    return "\n".join(lines)


def setup_section(limits: Limits, m: dict[str, Any]) -> str:
    """The machine, and the settings every proxy shares (a scenario may set its own
    ``max_inflight`` and ``response_s``: ``describe_run`` says)."""
    rows = [f"| `{k}` | {v} |" for k, v in dataclasses.asdict(limits).items()]
    head = [
        f"**Machine**: {describe_machine(m)}.",
        "",
        "| shared setting | default |",
        "|---|---:|",
    ]
    return "\n".join(head + rows)
