"""When a starting replica is ready: it has an address and its health path answers 2xx.

A replica is polled every ``READY_POLL_S`` from its start until its startup deadline. Its
address may not exist yet (a container created but not running has none) and the driver
may fail to tell it (the engine away: the tick reports that); both are polled on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp

log = logging.getLogger(__name__)

READY_POLL_S = 0.2


async def await_ready(
    session: aiohttp.ClientSession,
    address: Callable[[], Awaitable[str | None]],
    health_path: str,
    check_timeout_s: float,
    deadline: float,
    clock: Callable[[], float],
    starting: Callable[[], bool],
) -> str | None:
    """The replica's URL once it is ready; None at ``deadline``, or once ``starting``
    says it no longer is (removed, or failed, meanwhile)."""
    url = None
    while clock() < deadline and starting():
        try:
            url = url or await address()
        except Exception as exc:
            log.debug("no address yet: %s", exc)
        if url is not None and await _healthy(session, url + health_path, check_timeout_s):
            return url
        await asyncio.sleep(READY_POLL_S)
    return None


async def _healthy(session: aiohttp.ClientSession, url: str, timeout_s: float) -> bool:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            return 200 <= response.status < 300
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
