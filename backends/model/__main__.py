"""Command line: ``python -m backends.model --port 8000 [--model PATH] [--no-batching] ...``.

Listens at once (``/health`` says 503 while the model loads), exits with status 1 if the
model cannot be loaded, so that whoever started it (the gateway's autoscaler, a test,
Docker) sees a failed replica rather than one that never becomes ready. Stops cleanly on
SIGTERM or SIGINT: requests in flight are answered first.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from backends.model.runtime import PROVIDER_CHOICES
from backends.model.server import ModelServer, Settings, make_app
from backends.signals import stop_signal


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m backends.model", description=__doc__)
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p.add_argument("--name", help="replica name, in the X-Replica header (default model-<port>)")
    p.add_argument("--model", type=Path, default=d.model, help="ONNX file (default: digits)")
    p.add_argument("--provider", choices=PROVIDER_CHOICES, default=d.provider,
                   help="auto: CUDA when onnxruntime offers it, else CPU")  # fmt: skip
    p.add_argument("--no-batching", dest="batching", action="store_false",
                   help="one inference call per request (the benchmark's baseline)")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="rows per call")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="longest a request waits for its batch to fill")  # fmt: skip
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="queued requests, max")
    p.add_argument("--max-rows", type=int, default=d.max_rows, help="rows per request, max")
    p.add_argument("--intra-op-threads", type=int, default=d.intra_op_threads)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if args.max_batch < 1 or args.max_wait_ms < 0 or args.max_queue < 1 or args.max_rows < 1:
        p.error("--max-batch, --max-queue and --max-rows must be >= 1, --max-wait-ms >= 0")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        model=args.model,
        provider=args.provider,
        batching=args.batching,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_rows=args.max_rows,
        intra_op_threads=args.intra_op_threads,
        name=args.name or f"model-{args.port}",
    )


async def serve(args: argparse.Namespace) -> int:
    """Serve until a stop signal (0) or a failed model load (1)."""
    server = ModelServer(settings_from(args))
    runner = web.AppRunner(make_app(server), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port, backlog=1024).start()
    print(f"model: listening on {args.host}:{args.port}, loading {args.model}", flush=True)
    stop = stop_signal()
    assert server.loading is not None  # started by the app's cleanup context in setup()
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({server.loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    failed = server.loading.done() and server.loading.exception() is not None
    if not failed:
        await stopping
    stopping.cancel()
    await runner.cleanup()
    if failed:
        print(f"model: could not load {args.model}: {server.error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    sys.exit(uvloop.run(serve(args)))


if __name__ == "__main__":
    main()
