"""The LLM benchmarks: the gateway's policies against vllm-router, sglang-router and HAProxy
round robin, on the same LLM-like replicas and the same conversations.

    python -m load.bench llm-chat              # multi-turn chat, shared system prompts
    python -m load.bench llm-rag               # long shared documents, short questions
    python -m load.bench llm-overload          # above capacity: classes and a flooding tenant
    python -m load.bench llm-chat --duration 20 --contestants gateway-prefix_affinity,vllm-router

Each contestant gets four fresh replicas (``python -m backends.llm``, cold caches, a KV
cache of ``num_blocks`` far smaller than the working set) and the seeded workload of
``llm_workload``; the client streams every answer (``stream_options.include_usage``)
and times the first token (the first event with text) and each gap after it. The
routers come from PyPI into ``load/out/routers`` (a venv of their own) when missing, and
run with their defaults (``cache_aware``), as the gateway runs with its: each gateway
contestant sets only its policy, and reads its engines' metrics (``engine_metrics``),
which is how an LLM pool is meant to run. Prefix-cache hits and each replica's share of
prompt tokens come from the replicas' own ``/metrics``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import venv
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from gateway.control.drivers import free_port
from load.bench import report
from load.bench.contestants import Limits, haproxy_config
from load.bench.llm_workload import FLOOD, SHAPES, Conversation, generate
from load.procs import Procs, python, wait_for_url, write_config

NAMES = tuple(SHAPES)
ABOUT = {
    "llm-chat": "multi-turn chat over shared system prompts, 4 LLM-like replicas, small KV caches",
    "llm-rag": "long shared documents with short questions, 4 LLM-like replicas",
    "llm-overload": "above capacity: critical / standard / sheddable, one tenant flooding",
}
LOAD = Path(__file__).resolve().parents[1]
ROUTERS = LOAD / "out" / "routers"  # git-ignored
ROUTER_PACKAGES = {"vllm-router": "vllm-router", "sglang-router": "sglang-router"}
GATEWAY_POLICIES = ("round_robin", "least_connections", "peak_ewma", "prefix_affinity")
CONTESTANTS = (
    *(f"gateway-{p}" for p in GATEWAY_POLICIES),
    "vllm-router",
    "sglang-router",
    "haproxy-roundrobin",
)
MODEL = "llama-3-8b"


@dataclass(frozen=True)
class Replicas:
    count: int = 4
    num_blocks: int = 1024  # 16 Ki tokens each: a fraction of the working set
    max_num_seqs: int = 256


REPLICAS = {
    "llm-chat": Replicas(),
    "llm-rag": Replicas(num_blocks=768),
    "llm-overload": Replicas(max_num_seqs=2),
}


@dataclass
class Answer:
    """One turn as the client saw it."""

    start_s: float
    tenant: str
    priority: str
    status: int = 0  # 0: no answer (a connection error or a timeout)
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    tokens: int = 0


def ensure_routers() -> dict[str, str]:
    """The routers' entry points, installed from PyPI into their own venv when missing."""
    bins = {name: ROUTERS / "bin" / name for name in ROUTER_PACKAGES}
    if not all(path.exists() for path in bins.values()):
        print("installing vllm-router and sglang-router from PyPI", file=sys.stderr, flush=True)
        venv.create(ROUTERS, with_pip=True)
        pip = [str(ROUTERS / "bin" / "pip"), "install", "-q", *ROUTER_PACKAGES.values()]
        subprocess.run(pip, check=True)
    return {name: str(path) for name, path in bins.items()}


def launch(name: str, procs: Procs, urls: list[str], binaries: dict[str, str]) -> str:
    """Start contestant ``name`` in front of ``urls``; its chat completions URL."""
    port, out = free_port(), procs.log_dir
    worker_flags = ["--host", "127.0.0.1", "--port", str(port), "--worker-urls", *urls]
    metrics_flags = ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
    if name.startswith("gateway-"):
        pool = {
            "policy": name.removeprefix("gateway-"),
            "backends": urls,
            "engine_metrics": {"enabled": True},
            "timeouts": {"request_s": 120},
            "queue": {"timeout_s": 60},
        }
        config = {
            "listen": {"host": "127.0.0.1", "port": port},
            "admin": {"host": "127.0.0.1", "port": free_port()},
            "routes": [{"path": "/v1", "pool": "llm", "priority_header": True}],
            "state_dir": str(out / "state"),
            "pools": {"llm": pool},
        }
        path = write_config(out / "gateway.yaml", config)
        argv = python("gateway", "run", "--config", str(path))
    elif name == "vllm-router":
        argv = [binaries[name], *worker_flags, *metrics_flags]
    elif name == "sglang-router":
        argv = [binaries[name], "launch", *worker_flags, *metrics_flags]
    else:
        limits = Limits(max_inflight=256, response_s=120, queue_s=60)
        (out / "haproxy.cfg").write_text(haproxy_config("roundrobin", urls, port, limits, out))
        argv = [binaries["haproxy"], "-db", "-f", str(out / "haproxy.cfg")]
    procs.start(name, argv)
    return f"http://127.0.0.1:{port}/v1/chat/completions"


async def chat_turn(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]], max_tokens: int,
    answer: Answer, timeout_s: float,
) -> str:  # fmt: skip
    """Send one turn, streamed; fill ``answer``; the answer's text ("" on failure)."""
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    headers = {"Authorization": f"Bearer key-{answer.tenant}", "X-Priority": answer.priority,
               "Content-Type": "application/json"}  # fmt: skip
    text: list[str] = []
    sent = time.perf_counter()
    last = sent
    try:
        async with session.post(
            url, data=orjson.dumps(body), headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:  # fmt: skip
            answer.status = resp.status
            if resp.status != 200:
                await resp.read()
                return ""
            async for line in resp.content:
                if not line.startswith(b"data: {"):
                    continue
                event = orjson.loads(line[6:])
                usage = event.get("usage")
                if usage:
                    answer.tokens = usage.get("completion_tokens", answer.tokens)
                for choice in event.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        now = time.perf_counter()
                        if answer.ttft_s is None:
                            answer.ttft_s = now - sent
                        else:
                            answer.gaps_s.append(now - last)
                        last = now
                        text.append(piece)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        answer.status = 0
        return ""
    return "".join(text)


async def converse(
    session: aiohttp.ClientSession, url: str, c: Conversation, t0: float, end: float,
    answers: list[Answer], timeout_s: float,
) -> None:  # fmt: skip
    await asyncio.sleep(max(0.0, t0 + c.start_s - time.perf_counter()))
    messages = [{"role": "system", "content": c.system}]
    for turn in c.turns:
        if time.perf_counter() >= end:
            return
        messages.append({"role": "user", "content": turn.user})
        answer = Answer(time.perf_counter() - t0, c.tenant, c.priority)
        answers.append(answer)
        reply = await chat_turn(session, url, messages, turn.max_tokens, answer, timeout_s)
        if answer.status != 200:
            return
        messages.append({"role": "assistant", "content": reply})
        await asyncio.sleep(turn.think_s)


async def replica_figures(urls: list[str]) -> list[dict[str, float]]:
    """Each replica's prompt tokens and prefix-cache queries and hits, from its metrics."""
    wanted = {"vllm:prompt_tokens": "prompt", "vllm:prefix_cache_queries": "queries",
              "vllm:prefix_cache_hits": "hits"}  # fmt: skip
    figures = []
    async with aiohttp.ClientSession() as session:
        for url in urls:
            async with session.get(f"{url}/metrics") as resp:
                text = await resp.text()
            got = dict.fromkeys(wanted.values(), 0.0)
            for family in text_string_to_metric_families(text):
                if family.name in wanted:
                    got[wanted[family.name]] += sum(
                        s.value for s in family.samples if s.name.endswith("_total")
                    )
            figures.append(got)
    return figures


async def ready(url: str, proc: subprocess.Popen[bytes], within: float = 60.0) -> None:
    """Wait until ``url`` answers a one-token chat (JSON, as the routers insist)."""
    body = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "ready?"}]}
    deadline, last = time.monotonic() + within, "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode}")
            try:
                async with session.post(url, json=body) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = type(exc).__name__
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url}: not ready within {within:g} s ({last})")


def start_replicas(procs: Procs, r: Replicas) -> list[str]:
    urls = []
    for i in range(r.count):
        port = free_port()
        procs.start(f"r{i}", python(
            "backends.llm", "--port", str(port), "--model", MODEL,
            "--num-blocks", str(r.num_blocks), "--max-num-seqs", str(r.max_num_seqs),
        ))  # fmt: skip
        urls.append(f"http://127.0.0.1:{port}")
    return urls


async def run_contestant(
    scenario: str, name: str, duration: float, seed: int, out: Path, binaries: dict[str, str],
    rate: float | None = None, unflooded: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One contestant's run; ``unflooded``: the same workload less the flood's turns."""
    shape = SHAPES[scenario]
    conversations = generate(replace(shape, rate=rate) if rate else shape, duration, seed)
    if unflooded:
        conversations = [c for c in conversations if c.tenant != FLOOD]
    with Procs(log_dir=out / scenario / name, grace_s=10) as procs:
        urls = start_replicas(procs, REPLICAS[scenario])
        for i, url in enumerate(urls):
            await wait_for_url(f"{url}/health", within=30, proc=procs.procs[f"r{i}"])
        target = launch(name, procs, urls, binaries)
        try:
            await ready(target, procs.procs[name])
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}; its log: {procs.log_dir}") from None
        before = await replica_figures(urls)
        answers: list[Answer] = []
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            t0 = time.perf_counter()
            end = t0 + duration
            await asyncio.gather(*(
                converse(session, target, c, t0, end, answers, timeout_s=120)
                for c in conversations
            ))  # fmt: skip
            wall = time.perf_counter() - t0
        after = await replica_figures(urls)
    figures = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    return {"contestant": name, "wall_s": wall, "replicas": figures,
            "answers": [asdict(a) for a in answers], "logs": str(procs.log_dir)}  # fmt: skip


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def summarize(run: dict[str, Any], only: dict[str, str] | None = None) -> dict[str, Any]:
    """The figures of a run, over the answers matching ``only`` (e.g. a class)."""
    answers = [a for a in run["answers"] if all(a[k] == v for k, v in (only or {}).items())]
    ok = [a for a in answers if a["status"] == 200]
    ttft = [a["ttft_s"] * 1e3 for a in ok if a["ttft_s"] is not None]
    gaps = [g * 1e3 for a in ok for g in a["gaps_s"]]
    prompt = [r["prompt"] for r in run["replicas"]]
    queries, hits = (
        sum(r["queries"] for r in run["replicas"]),
        sum(r["hits"] for r in run["replicas"]),
    )
    shares = [round(100 * p / sum(prompt)) if sum(prompt) else 0 for p in prompt]
    return {
        "requests": len(answers),
        "errors": sum(1 for a in answers if a["status"] not in (200, 429)),
        "shed": sum(1 for a in answers if a["status"] == 429),
        "ttft_p50": pct(ttft, 50), "ttft_p90": pct(ttft, 90), "ttft_p99": pct(ttft, 99),
        "itl_p99": pct(gaps, 99), "tokens_per_s": sum(a["tokens"] for a in ok) / run["wall_s"],
        "hit_rate": hits / queries if queries else 0.0, "prompt_share": shares,
    }  # fmt: skip


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| contestant | TTFT p50 / p90 / p99 ms | ITL p99 ms | output tok/s | prefix hits "
        "| errors | prompt tokens by replica % |",
        "|---|---|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for run in runs:
        s = summarize(run)
        lines.append(
            f"| {run['contestant']} | {ms(s['ttft_p50'])} / {ms(s['ttft_p90'])} / "
            f"{ms(s['ttft_p99'])} | {ms(s['itl_p99'])} | {s['tokens_per_s']:.0f} | "
            f"{100 * s['hit_rate']:.0f} % | {s['errors']} | "
            f"{' / '.join(map(str, s['prompt_share']))} |"
        )
    return "\n".join(lines)


def subset(run: dict[str, Any], keep: Any) -> dict[str, Any]:
    """``summarize`` over the answers for which ``keep(answer)`` holds."""
    return summarize({**run, "answers": [a for a in run["answers"] if keep(a)]})


def overload_table(runs: list[dict[str, Any]], calm_s: float) -> str:
    """Per class: TTFT p99 calm (before ``calm_s``) and loaded, and refusals; the other
    tenants' standard p99 with the flood and without it (the same arrivals less the
    flood's, ``unflooded``), and their ratio: what the flood cost them."""
    lines = [
        "| contestant | critical p99 calm / loaded ms | standard p99 ms | sheddable p99 ms "
        "| 429 critical / standard / sheddable | failed | output tok/s "
        "| others' standard p99 flood / none ms |",
        "|---|---|---:|---:|---|---:|---:|---|",
    ]  # fmt: skip
    for run in runs:

        def loaded(cls: str, run: dict[str, Any] = run) -> dict[str, Any]:
            return subset(run, lambda a: a["priority"] == cls and a["start_s"] >= calm_s)

        def others(a: dict[str, Any]) -> bool:
            return bool(a["tenant"] != FLOOD and a["priority"] == "standard"
                        and a["start_s"] >= calm_s)  # fmt: skip

        calm = subset(run, lambda a: a["priority"] == "critical" and a["start_s"] < calm_s)
        crit, std, shed = loaded("critical"), loaded("standard"), loaded("sheddable")
        flooded = subset(run, others)["ttft_p99"]
        quiet = subset({**run, "answers": run.get("unflooded", [])}, others)["ttft_p99"]
        ratio = f" ({flooded / quiet:.1f}x)" if flooded and quiet else ""
        lines.append(
            f"| {run['contestant']} | {ms(calm['ttft_p99'])} / {ms(crit['ttft_p99'])} | "
            f"{ms(std['ttft_p99'])} | {ms(shed['ttft_p99'])} | "
            f"{crit['shed']} / {std['shed']} / {shed['shed']} | {summarize(run)['errors']} | "
            f"{summarize(run)['tokens_per_s']:.0f} | {ms(flooded)} / {ms(quiet)}{ratio} |"
        )
    return "\n".join(lines)


async def run(
    scenario: str, names: list[str], duration: float, seed: int, out: Path,
    binaries: dict[str, str], rate: float | None,
) -> list[dict[str, Any]]:  # fmt: skip
    runs = []
    for name in names:
        print(f"{scenario}: {name}", file=sys.stderr, flush=True)
        result = await run_contestant(scenario, name, duration, seed, out, binaries, rate)
        if scenario == "llm-overload":  # the other tenants' figures with no flood to compare
            print(f"{scenario}: {name}, without the flood", file=sys.stderr, flush=True)
            quiet = await run_contestant(
                scenario, name, duration, seed, out / "unflooded", binaries, rate, unflooded=True
            )
            result["unflooded"] = quiet["answers"]
        s = summarize(result)
        print(f"  {s['requests']} turns, errors {s['errors']}, TTFT p90 {ms(s['ttft_p90'])} ms,"
              f" {s['tokens_per_s']:.0f} tok/s, hits {100 * s['hit_rate']:.0f} %",
              file=sys.stderr, flush=True)  # fmt: skip
        runs.append(result)
    return runs


def section(result: dict[str, Any], plot: str) -> str:
    """A benchmark's section of RESULTS.md: what ran, on what, its table and figure."""
    return "\n".join([
        f"### {result['scenario']}", "", result["about"] + ".", "",
        f"```sh\n{result['command']}\n```", "",
        f"**Machine**: {report.describe_machine(result['machine'])}; the routers from PyPI "
        f"(vllm-router, sglang-router, their default `cache_aware`).", "",
        render(result["scenario"], result["llm"]), "",
        f"![{result['scenario']}: TTFT by contestant]({plot})",
    ])  # fmt: skip


def render(scenario: str, runs: list[dict[str, Any]]) -> str:
    if scenario == "llm-overload":
        return overload_table(runs, SHAPES[scenario].calm_s)
    return table(runs)


def main(scenario: str, duration: float, seed: int, contestants: str | None, out: Path,
         haproxy: str | None, rate: float | None = None) -> list[dict[str, Any]]:  # fmt: skip
    names = contestants.split(",") if contestants else list(CONTESTANTS)
    unknown = sorted(set(names) - set(CONTESTANTS))
    if unknown:
        raise SystemExit(f"unknown contestants {', '.join(unknown)}; of {', '.join(CONTESTANTS)}")
    binaries = ensure_routers() if any(n.endswith("-router") for n in names) else {}
    if haproxy:
        binaries["haproxy"] = haproxy
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(run(scenario, names, duration, seed, out, binaries, rate))
