"""Dynamic batching: requests that arrive close together share one inference call.

Why: an inference call has a fixed cost (crossing into the inference thread, the runtime's
per-call setup, on a GPU a kernel launch and two copies) that barely grows with the rows
in it, so under concurrency many small calls waste most of the time on overhead. Here each
request puts its rows in a FIFO queue and waits on a future; one collector task takes the
oldest request, then waits for more until the batch holds ``max_batch`` rows or the oldest
request has waited ``max_wait_s`` (measured from its arrival, so a request that already
waited behind the previous batch is not made to wait again), concatenates them, runs them
as ONE call on a single inference thread, and hands each request its slice of the answer.

Only one call runs at a time: while it runs, the next batch fills up, which is what makes
batches grow with load. The event loop never blocks on inference (it runs in the
executor's thread). With ``batching=False`` the same queue is served one request per call
in arrival order, which is the baseline the benchmark compares against.

This module knows nothing of HTTP or of metrics: ``infer`` is any blocking function from a
``[rows, features]`` array to (labels, probabilities), and ``on_run`` hears of every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

Outputs = tuple[np.ndarray, np.ndarray]
Infer = Callable[[np.ndarray], Outputs]
OnRun = Callable[[int, float], None]  # (rows in the call, seconds the call took)


class QueueFull(Exception):
    """The queue already holds ``max_queue`` requests: shed this one (the server says 503)."""


class Stopped(Exception):
    """The batcher was stopped while the request waited."""


@dataclass(slots=True)
class _Item:
    rows: np.ndarray
    future: asyncio.Future[Outputs]
    arrived: float  # time.perf_counter(); uvloop's loop.time() ticks in whole milliseconds


class Batcher:
    """Gathers concurrent requests into single inference calls; see the module docstring."""

    def __init__(
        self,
        infer: Infer,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        batching: bool = True,
        max_queue: int = 4096,
        on_run: OnRun | None = None,
    ) -> None:
        if max_batch < 1 or max_wait_s < 0 or max_queue < 1:
            raise ValueError("need max_batch >= 1, max_wait_s >= 0 and max_queue >= 1")
        self.infer = infer
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.batching = batching
        self.max_queue = max_queue
        self.on_run = on_run
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.runs = 0  # inference calls made
        self.rows = 0  # rows inferred
        self.requests = 0  # requests answered
        self.largest = 0  # most rows in one call
        self._pending: deque[_Item] = deque()
        self._pending_rows = 0
        self._running: list[_Item] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a call (not counting those in the call now running)."""
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._collect(), name="batcher")

    async def stop(self) -> None:
        """Stop collecting; requests still queued or running fail with ``Stopped``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for item in [*self._running, *self._pending]:
            if not item.future.done():
                item.future.set_exception(Stopped("the model server is stopping"))
        self._pending.clear()
        self._pending_rows = 0
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, rows: np.ndarray) -> Outputs:
        """Queue ``rows`` (float32 ``[n, features]``) and wait for their labels and
        probabilities. Raises QueueFull at once when the queue is full."""
        if self._task is None:
            raise Stopped("the batcher is not running")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests already queued")
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(rows, future, time.perf_counter()))
        self._pending_rows += len(rows)
        self._arrived.set()
        return await future

    async def _collect(self) -> None:
        """The one collector: wait for work, let a batch fill, run it, repeat."""
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if self.batching:
                await self._fill()
            items = self._take()
            if items:
                await self._run(items)

    async def _fill(self) -> None:
        """Wait until the queue holds ``max_batch`` rows or the oldest request's wait is up."""
        deadline = self._pending[0].arrived + self.max_wait_s
        while self._pending_rows < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _take(self) -> list[_Item]:
        """The oldest requests that fit in one call (always at least one, however large;
        one only without batching); requests whose callers gave up are dropped."""
        items: list[_Item] = []
        rows = 0
        while self._pending:
            item = self._pending[0]
            if items and (not self.batching or rows + len(item.rows) > self.max_batch):
                break
            self._pending.popleft()
            self._pending_rows -= len(item.rows)
            if not item.future.done():
                items.append(item)
                rows += len(item.rows)
        return items

    async def _run(self, items: list[_Item]) -> None:
        """One inference call for ``items``; each gets its slice, or the call's error."""
        batch = items[0].rows if len(items) == 1 else np.concatenate([i.rows for i in items])
        self._running = items
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            labels, probabilities = await loop.run_in_executor(self.executor, self.infer, batch)
            if len(labels) != len(batch) or len(probabilities) != len(batch):
                raise RuntimeError(f"the model answered {len(labels)} rows for {len(batch)}")
        except Exception as exc:
            self._running = []
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        # not in a `finally`: when stop() cancels this task mid-call, it fails these items
        self._running = []
        elapsed = time.perf_counter() - started
        self.runs += 1
        self.rows += len(batch)
        self.requests += len(items)
        self.largest = max(self.largest, len(batch))
        if self.on_run is not None:
            self.on_run(len(batch), elapsed)
        offset = 0
        for item in items:
            end = offset + len(item.rows)
            if not item.future.done():
                item.future.set_result((labels[offset:end], probabilities[offset:end]))
            offset = end
