"""How every backend's command line stops: on SIGTERM (Docker, the process driver) or
SIGINT (a terminal), then cleans up."""

from __future__ import annotations

import asyncio
import signal


def stop_signal() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT (on the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
