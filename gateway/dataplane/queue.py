"""The requests that wait for a slot on a pool's replicas, oldest first.

A freed slot goes straight to the oldest waiter that may use it (FIFO, no herd); a waiter
that excludes every free replica (a retry) does not block the ones behind it. A waiter
whose request was cancelled gives back whatever it was holding or waiting for. The pool
says which replica has a free slot for whom (``pick``) and takes it (``take``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.dataplane.replica import Replica


@dataclass(eq=False, slots=True)
class _Waiter:
    future: asyncio.Future[Replica]
    exclude: frozenset[str]
    prompt: Sequence[int]  # the request's prompt blocks, for a policy that reads them


class SlotQueue:
    def __init__(
        self,
        pick: Callable[[frozenset[str], Sequence[int]], Replica | None],
        take: Callable[[Replica], None],
        give_back: Callable[[Replica], None],
    ) -> None:
        self._pick, self._take, self._give_back = pick, take, give_back
        self._waiters: deque[_Waiter] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    async def wait(
        self,
        exclude: frozenset[str],
        prompt: Sequence[int],
        timeout_s: float,
        timed_out: Callable[[], Exception],
    ) -> Replica:
        """A slot on a replica outside ``exclude``, taken for the caller; after
        ``timeout_s``, the exception ``timed_out`` makes."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), exclude, prompt)
        self._waiters.append(waiter)
        timer = loop.call_later(timeout_s, self._expire, waiter, timed_out)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._withdraw(waiter)
            raise
        finally:
            timer.cancel()

    def dispatch(self) -> None:
        """Hand free slots to waiters, oldest first. A waiter whose request was cancelled
        but has not run yet is passed over (it withdraws itself): a slot handed to it
        would be counted in flight and never given back."""
        while self._waiters:
            for waiter in self._waiters:
                if waiter.future.done():
                    continue
                replica = self._pick(waiter.exclude, waiter.prompt)  # oldest first: none ahead
                if replica is not None:
                    break
                if not waiter.exclude:
                    return  # no free slot for anyone
            else:
                return
            self._waiters.remove(waiter)
            self._take(replica)
            waiter.future.set_result(replica)

    def _expire(self, waiter: _Waiter, timed_out: Callable[[], Exception]) -> None:
        if not waiter.future.done():
            self._waiters.remove(waiter)
            waiter.future.set_exception(timed_out())

    def _withdraw(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        elif (
            waiter.future.done()
            and not waiter.future.cancelled()
            and waiter.future.exception() is None
        ):
            self._give_back(waiter.future.result())
