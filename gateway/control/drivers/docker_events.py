"""The Docker engine's event stream of this gateway's containers, as pool names.

The reconcile loop lists its replicas every tick; the events only make it run early
when a container starts, stops, dies or is removed outside it (``docker kill``, an OOM),
so hints may repeat or be lost and nothing depends on them.

Each stream starts from the moment it was asked for (a second before, for clock
granularity), so nothing after the call is missed even though the subscription happens
on the first ``__anext__``. It reconnects after an engine restart from the last event
seen, with backoff, logged when it is lost and when it is back, not at each failed try.
The SDK's stream blocks for as long as it is open, so it gets a daemon thread of its own:
it never holds an executor thread or delays the loop's shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gateway.control.backoff import backoff
from gateway.control.drivers import POOL

log = logging.getLogger(__name__)

EVENT_ACTIONS = ("start", "die", "stop", "destroy")
EVENTS_RETRY_S = (0.5, 10.0)  # reconnect backoff of the event stream: first, cap
_END = object()  # the event thread's stream ended


async def container_events(
    client: Callable[[], Awaitable[Any]],
    labels: tuple[str, ...],
    since: str,
    closing: asyncio.Event,
    streams: set[Any],
) -> AsyncIterator[str]:
    """Pool names of the containers carrying ``labels``, from ``since`` (the engine's
    ``seconds.nanoseconds`` form, exact on reconnects) until ``closing`` is set; each
    open stream is in ``streams`` (for the driver to close)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    filters = {"type": "container", "label": list(labels), "event": list(EVENT_ACTIONS)}

    def deliver(item: object) -> None:  # called from the stream's thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            loop.call_soon_threadsafe(queue.put_nowait, item)

    failures = 0  # in a row: the stream could not open, or ended, with no event since
    lost = False  # the stream ended or could not be opened, and is not back yet
    while not closing.is_set():
        try:
            stream = await asyncio.to_thread(
                (await client()).api.events, since=since, filters=filters, decode=True
            )
        except Exception as exc:
            log.log(
                logging.DEBUG if lost else logging.WARNING,
                "docker: cannot watch events (%s); retrying with backoff", exc,
            )  # fmt: skip
            lost = True
        else:
            if lost:
                log.info("docker: watching events again")
                lost = False
            streams.add(stream)
            threading.Thread(
                target=_pump, args=(stream, deliver), name="docker-events", daemon=True
            ).start()
            try:
                while (item := await queue.get()) is not _END:
                    if isinstance(item, dict):
                        failures = 0
                        if "timeNano" in item:
                            seconds, nanos = divmod(int(item["timeNano"]), 10**9)
                            since = f"{seconds}.{nanos:09d}"
                        pool = ((item.get("Actor") or {}).get("Attributes") or {}).get(POOL)
                        if pool:
                            yield str(pool)
            finally:
                streams.discard(stream)
                with contextlib.suppress(Exception):
                    stream.close()
        failures += 1
        pause_s = backoff(failures, *EVENTS_RETRY_S)
        if not lost and not closing.is_set():
            log.warning("docker: event stream ended; reconnecting in %.1f s", pause_s)
            lost = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), pause_s)


def _pump(stream: Any, deliver: Callable[[object], None]) -> None:
    """Thread body: hand each event of a blocking stream to the loop, then ``_END``."""
    try:
        for event in stream:
            deliver(event)
    except Exception as exc:  # a broken connection ends the stream like EOF does
        log.debug("docker: event stream broke: %s", exc)
    finally:
        deliver(_END)
