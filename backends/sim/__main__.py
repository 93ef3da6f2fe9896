"""Command line: ``python -m backends.sim --port 9001`` or ``--ports 9001,9002,9003``.

Several ports make several independent replicas in one process, each with its own
settings, slots and counters (named ``sim-<port>``). Every setting has a flag; all of them
can be changed later through ``POST /control``. Stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import sys

import uvloop
from aiohttp import web

from backends.signals import stop_signal
from backends.sim.server import DISTRIBUTIONS, Settings, Sim, make_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m backends.sim", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    ports = p.add_mutually_exclusive_group()
    ports.add_argument("--port", type=int, help="one replica (default: $PORT or 8000)")
    ports.add_argument("--ports", help="comma-separated ports, one replica each")
    p.add_argument("--name", help="replica name, for a single port (default sim-<port>)")
    d = Settings()
    p.add_argument("--service-ms", type=float, default=d.service_ms)
    p.add_argument("--distribution", choices=DISTRIBUTIONS, default=d.distribution)
    p.add_argument("--sigma", type=float, default=d.sigma, help="lognormal shape")
    p.add_argument("--slots", type=int, default=d.slots, help="requests served at once")
    p.add_argument("--slowdown", type=float, default=d.slowdown)
    p.add_argument("--fail-rate", type=float, default=d.fail_rate)
    p.add_argument("--hang", action="store_true", help="accept requests, answer none")
    p.add_argument("--startup-delay-s", type=float, default=d.startup_delay_s)
    p.add_argument("--tokens", type=int, default=d.tokens, help="SSE events when streaming")
    p.add_argument("--token-ms", type=float, default=d.token_ms, help="default service/tokens")
    p.add_argument("--seed", type=int, default=d.seed)
    args = p.parse_args(argv)
    if args.ports:
        args.port_list = [int(x) for x in args.ports.split(",") if x.strip()]
    else:
        args.port_list = [args.port or int(os.environ.get("PORT", "8000"))]
    if args.name and len(args.port_list) > 1:
        p.error("--name applies to a single port")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    fields = Settings.__dataclass_fields__
    settings = Settings(**{key: getattr(args, key) for key in fields})
    try:
        settings.check()
    except ValueError as exc:
        sys.exit(f"invalid setting {exc}")
    return settings


async def serve(args: argparse.Namespace) -> None:
    """Start one replica per port, wait for a stop signal, then shut down."""
    runners = []
    for i, port in enumerate(args.port_list):
        settings = settings_from(args)
        if settings.seed is not None:
            settings.seed += i  # replicas draw different, still reproducible, sequences
        sim = Sim(args.name or f"sim-{port}", settings)
        runner = web.AppRunner(make_app(sim), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, args.host, port, backlog=1024).start()
        runners.append(runner)
    print(f"sim: serving {len(runners)} replica(s) on {args.host}:{args.port_list}", flush=True)
    stop = stop_signal()
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    uvloop.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
