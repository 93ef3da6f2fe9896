"""Command line: ``python -m backends.llm --port 8000 --model llama-3-8b``.

An LLM-like replica with vLLM's OpenAI API, metrics and sleep mode over an engine model
(``backends/llm/engine.py``; its calibration is in docs/llm-replica.md). Stops cleanly
on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os

import uvloop
from aiohttp import web

from backends.llm.api import make_app
from backends.llm.engine import Timing
from backends.llm.replica import Settings
from backends.signals import stop_signal


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m backends.llm", description=__doc__)
    d, t = Settings(), Timing()
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p.add_argument("--model", default=d.model, help="the name it serves")
    p.add_argument("--alias", action="append", default=[], help="another name (repeatable)")
    p.add_argument("--num-blocks", type=int, default=d.num_blocks, help="KV blocks of 16 tokens")
    p.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    p.add_argument("--step-ms", type=float, default=t.step_s * 1e3, help="a decode pass, alone")
    p.add_argument("--per-seq-ms", type=float, default=t.per_seq_s * 1e3)
    p.add_argument("--prefill-token-ms", type=float, default=t.prefill_token_s * 1e3)
    p.add_argument("--startup-delay-s", type=float, default=d.startup_delay_s)
    p.add_argument("--wake-s", type=float, default=d.wake_s)
    p.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens)
    args = p.parse_args(argv)
    if min(args.num_blocks, args.max_num_seqs, args.default_max_tokens) < 1:
        p.error("--num-blocks, --max-num-seqs and --default-max-tokens must be >= 1")
    if min(args.step_ms, args.per_seq_ms, args.prefill_token_ms, args.startup_delay_s) < 0:
        p.error("times must be >= 0")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    timing = Timing(args.step_ms / 1e3, args.per_seq_ms / 1e3, args.prefill_token_ms / 1e3)
    return Settings(
        model=args.model,
        aliases=tuple(args.alias),
        num_blocks=args.num_blocks,
        max_num_seqs=args.max_num_seqs,
        timing=timing,
        startup_delay_s=args.startup_delay_s,
        wake_s=args.wake_s,
        default_max_tokens=args.default_max_tokens,
    )


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(make_app(settings_from(args)), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port, backlog=1024).start()
    print(f"llm: serving {args.model} on {args.host}:{args.port}", flush=True)
    stop = stop_signal()
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    uvloop.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
