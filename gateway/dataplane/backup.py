"""A hedged attempt's backup: when it is sent, and which answer stands.

``Backup`` is armed when an attempt's request has been written. If no response head has
come ``delay_s`` later (``hedging.hedge_delay``), a copy goes to another replica, looked
for again every ``delay_s`` while none has a free slot; a good head from the backup ends
the first attempt's wait at once, with the exception its ``outrun`` gives (``Outrun``, or
``client.Detach`` for a probe that runs on). It costs one timer when never needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from gateway.dataplane.pool import Pool
from gateway.dataplane.replica import Replica
from gateway.dataplane.retry import RETRYABLE_STATUS
from gateway.http.client import UpstreamResponse


class Outrun(Exception):
    """Set on an attempt's response-head future: its backup answered first."""


@dataclass(slots=True)
class Answer:
    pool: Pool
    replica: Replica
    response: UpstreamResponse
    ttfb_s: float  # time to the response head: what the policies learn from
    level: int  # the replica's in-flight count when the attempt was sent, itself included
    kind: str  # the request's path: the concurrency limit learns per kind
    cold_wait_s: float | None = None  # how long it waited for a replica to start, if it did


class Backup:
    """One attempt's backup plan: ``start_backup`` sends the copy (None: no replica
    has a free slot now), ``outrun`` makes the exception that ends the first wait."""

    __slots__ = ("_head", "_timer", "backup", "delay_s", "outrun", "start_backup")

    def __init__(
        self,
        start_backup: Callable[[], asyncio.Task[Answer] | None],
        delay_s: float,
        outrun: Callable[[], Exception],
    ) -> None:
        self.start_backup = start_backup
        self.delay_s = delay_s
        self.outrun = outrun
        self.backup: asyncio.Task[Answer] | None = None
        self._head: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, head: asyncio.Future[None]) -> None:
        self._head = head
        self._timer = asyncio.get_running_loop().call_later(self.delay_s, self._fire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def drop(self, discard: Callable[[Answer], None]) -> None:
        """The backup's answer will not be used: cancel it, or discard what it got."""
        backup = self.backup
        if backup is None:
            return
        if not backup.done():
            backup.cancel()
        elif not backup.cancelled() and backup.exception() is None:
            discard(backup.result())

    def _fire(self) -> None:
        if self._head is None or self._head.done():
            return
        self.backup = self.start_backup()
        if self.backup is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay_s, self._fire)
        else:
            self.backup.add_done_callback(self._backup_done)

    def _backup_done(self, backup: asyncio.Task[Answer]) -> None:
        head = self._head
        if head is None or head.done() or backup.cancelled() or backup.exception() is not None:
            return
        if backup.result().response.status not in RETRYABLE_STATUS:
            head.set_exception(self.outrun())
