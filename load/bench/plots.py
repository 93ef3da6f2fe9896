"""One figure per scenario: per-second latency, errors and r0's share, a line per contestant;
and the matrix's heat map.

Each contestant keeps its colour across panels; the line style tells the program (the
gateway solid, HAProxy dashed, nginx dotted, direct dash-dot). The scenario's actions are
vertical lines. Seconds are of the schedule: a request counts in the second it was due,
so a slow answer shows where it hurt, not when it finally came back. matplotlib is
imported here only, when a figure is drawn (the ``load`` extra).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from load.bench.llm import pct

STYLES = {"gateway": "-", "haproxy": "--", "nginx": ":", "direct": "-."}


def plot_scenario(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

    runs = result["runs"]
    panels = 4 if result["watch"] else 3
    fig, axes = plt.subplots(panels, 1, sharex=True, figsize=(11, 2.6 * panels + 1))
    p50, p99, errors = axes[0], axes[1], axes[2]
    for i, run in enumerate(runs):
        series = run["series"]
        t = [row["t"] + 0.5 for row in series]
        style = {"color": f"C{i % 10}", "ls": STYLES[run["kind"]],
                 "lw": 2.2 if run["contestant"] == "gateway-peak_ewma" else 1.3,
                 "label": run["contestant"]}  # fmt: skip
        p50.plot(t, _latency(series, "p50"), **style)
        p99.plot(t, _latency(series, "p99"), **style)
        errors.plot(t, [sum(row["errors"].values()) for row in series], **style)
        if result["watch"]:
            share = [row["replicas"].get("r0", 0) / max(sum(row["replicas"].values()), 1)
                     for row in series]  # fmt: skip
            axes[3].plot(t, share, **style)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for ax, label in ((p50, "p50 latency (ms, log)"), (p99, "p99 latency (ms, log)")):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 1, 2, 5, 10, 20, 50, ...
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel(label)
    errors.set_yscale("symlog", linthresh=1)  # 0 stays visible, 1 to thousands readable
    errors.yaxis.set_major_formatter(plain)
    errors.set_ylim(bottom=0, top=max(errors.get_ylim()[1], 10))
    errors.set_ylabel("client errors per s\n(any non-2xx, timeouts)")
    if result["watch"]:
        axes[3].set_ylabel("share of answers\nfrom r0")
        axes[3].yaxis.set_major_formatter(PercentFormatter(1.0))
        axes[3].set_ylim(0, 1)
    for ax in axes:
        for action in result["actions"]:
            ax.axvline(action["at_s"], color="0.3", lw=1, alpha=0.6)
        ax.grid(alpha=0.3)
    for action in result["actions"]:
        p50.annotate(action["action"], (action["at_s"], 1), xycoords=("data", "axes fraction"),
                     xytext=(3, -12), textcoords="offset points", fontsize="small")  # fmt: skip
    axes[-1].set_xlabel(
        "time since the load started (s); requests counted in the second they were due"
    )
    p50.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    o = result["options"]
    about = textwrap.fill(f"{result['scenario']}: {result['about']}", 110)  # long ones fit
    fig.suptitle(f"{about}\n{result['rate']:g} rps offered, "
                 f"burstiness {o['burstiness']:g}, {o['duration']:g} s per contestant",
                 fontsize="medium")  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _latency(series: list[dict[str, Any]], q: str) -> list[float]:
    """Percentile ``q`` per second; a gap where no request of that second succeeded."""
    return [row["latency_ms"][q] if row["ok"] else float("nan") for row in series]


def plot_ratios(
    rows: list[str],
    columns: list[str],
    values: list[list[float | None]],
    title: str,
    path: Path,
) -> None:
    """A heat map of ratios to a baseline, each written in its square: blue under 1, red
    over, on a log scale (a ratio and its inverse are as far from 1) clipped to 1/4..4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter, NullFormatter

    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")  # grey: no ratio
    data = [[math.nan if v is None else v for v in row] for row in values]
    fig, ax = plt.subplots(figsize=(2.5 + 1.8 * len(columns), 1.2 + 0.4 * len(rows)))
    image = ax.imshow(data, cmap=cmap, norm=LogNorm(vmin=0.25, vmax=4), aspect="auto")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            dark = v is not None and v > 0 and abs(math.log(v)) > math.log(2.5)
            ax.text(j, i, "-" if v is None else f"{v:.2f}", ha="center", va="center",
                    fontsize="small", color="white" if dark else "black")  # fmt: skip
    ax.set_xticks(range(len(columns)), columns, fontsize="small")
    ax.set_yticks(range(len(rows)), rows)
    ax.xaxis.tick_top()
    bar = fig.colorbar(image, ax=ax, ticks=[0.25, 0.5, 1, 2, 4])
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    bar.ax.yaxis.set_minor_formatter(NullFormatter())
    bar.set_label("ratio (log scale)")
    ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_llm(title: str, runs: list[dict[str, Any]], path: Path, calm_s: float) -> None:
    """An LLM benchmark's figure: the TTFT distribution, and TTFT per 2 s of start time,
    a line per contestant (the gateway solid, the routers dashed, HAProxy dotted); with a
    calm stretch (``llm-overload``), TTFT p99 per class over time instead, the step from
    calm to overload a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    classes = ("critical", "standard", "sheddable") if calm_s else ()
    panels: list[tuple[str, str | None, int]] = [
        (f"{c}: TTFT p99 (ms, log)", c, 99) for c in classes
    ] or [("TTFT p90 (ms, log)", None, 90)]
    fig, axes = plt.subplots(len(panels) + (not classes), 1, figsize=(11, 3 * len(panels) + 3),
                             sharex=bool(classes))  # fmt: skip
    for i, run in enumerate(runs):
        name = run["contestant"]
        ls = "-" if name.startswith("gateway") else ":" if name.startswith("haproxy") else "--"
        style = {"color": f"C{i % 10}", "ls": ls, "label": name,
                 "lw": 2.2 if name == "gateway-prefix_affinity" else 1.3}  # fmt: skip
        ok = [a for a in run["answers"] if a["status"] == 200 and a["ttft_s"] is not None]
        for ax, (_, cls, q) in zip(axes, panels, strict=False):
            t, values = _windows([a for a in ok if cls is None or a["priority"] == cls], q)
            ax.plot(t, values, marker="o", ms=3, **style)  # a window alone still shows
        if not classes:
            ttft = sorted(a["ttft_s"] * 1e3 for a in ok)
            axes[-1].plot(ttft, [(k + 1) / len(ttft) for k in range(len(ttft))], **style)
    for ax, (label, _, _) in zip(axes, panels, strict=False):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel(label)
        ax.set_xlabel("start time (s), 2 s windows")
        if calm_s:
            ax.axvline(calm_s, color="0.3", lw=1, alpha=0.6)
        ax.grid(alpha=0.3)
    if not classes:
        axes[-1].set_xscale("log")
        axes[-1].xaxis.set_major_formatter(plain)
        axes[-1].set_xlabel("TTFT (ms, log)")
        axes[-1].set_ylabel("share of answers")
        axes[-1].grid(alpha=0.3)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.suptitle(textwrap.fill(title, 110), fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _windows(
    answers: list[dict[str, Any]], q: float, width_s: float = 2.0
) -> tuple[list[float], list[float]]:
    """Percentile ``q`` of TTFT (ms) per ``width_s`` of start time: the windows' middles
    and values (nan where a window has no answer)."""
    if not answers:
        return [], []
    buckets: dict[int, list[float]] = {}
    for a in answers:
        buckets.setdefault(int(a["start_s"] // width_s), []).append(a["ttft_s"] * 1e3)
    t, values = [], []
    for k in range(max(buckets) + 1):
        t.append((k + 0.5) * width_s)
        got = pct(buckets.get(k, []), q)
        values.append(math.nan if got is None else got)
    return t, values
