"""The requests that wait for a slot on a pool's replicas: by class, tenants in turn.

A freed slot goes straight to a waiter (no herd): the highest class first (``priority``),
within a class the tenants in turn (the one served longest ago first; a tenant that
starts waiting joins the end of the round), within a tenant the oldest. So a tenant's
flood waits behind itself: every other tenant of its class is served once per round,
however many requests the flood has queued. A waiter that excludes every free replica
(a retry) does not block the ones behind it. A waiter whose request was cancelled gives
back whatever it was holding or waiting for. The pool says which replica has a free
slot for whom (``pick``) and takes it (``take``).

A full queue makes room by shedding (``make_room``): the newest waiter of the largest
tenant of the lowest class below the newcomer's, or of its own class when one tenant
there has at least two more waiting than the newcomer's: a flood is shed before a
tenant with few requests is refused.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from gateway.dataplane.priority import STANDARD
from gateway.dataplane.replica import Replica

CLASSES = 3  # ranks 0 (critical) .. 2 (sheddable)


@dataclass(frozen=True, slots=True)
class Ask:
    """What a request brings to the queue, besides the replicas it excludes."""

    prompt: Sequence[int] = ()  # its prompt's blocks, for a policy that reads them
    rank: int = STANDARD  # its class: lower goes first
    tenant: str = ""  # whom it is fair among
    deadline_s: float | None = None  # the longest it may wait (``admission.py``)


PLAIN = Ask()


@dataclass(eq=False, slots=True)
class _Waiter:
    future: asyncio.Future[Replica]
    exclude: frozenset[str]
    ask: Ask


class SlotQueue:
    def __init__(
        self,
        pick: Callable[[frozenset[str], Ask], Replica | None],
        take: Callable[[Replica], None],
        give_back: Callable[[Replica], None],
    ) -> None:
        self._pick, self._take, self._give_back = pick, take, give_back
        # per class, tenant -> its waiters, oldest first; the dict's order is the round's
        self._classes: list[dict[str, deque[_Waiter]]] = [{} for _ in range(CLASSES)]
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def ahead_of(self, rank: int) -> int:
        """How many waiters a newcomer of class ``rank`` would have ahead of it."""
        return sum(len(ws) for tenants in self._classes[: rank + 1] for ws in tenants.values())

    async def wait(
        self,
        exclude: frozenset[str],
        ask: Ask,
        timeout_s: float,
        timed_out: Callable[[], Exception],
    ) -> Replica:
        """A slot on a replica outside ``exclude``, taken for the caller; after
        ``timeout_s``, the exception ``timed_out`` makes."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), exclude, ask)
        self._classes[ask.rank].setdefault(ask.tenant, deque()).append(waiter)
        self._count += 1
        timer = loop.call_later(timeout_s, self._expire, waiter, timed_out)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._withdraw(waiter)
            raise
        finally:
            timer.cancel()

    def dispatch(self) -> None:
        """Hand free slots to waiters in turn. A waiter whose request was cancelled but
        has not run yet is passed over (it withdraws itself): a slot handed to it would
        be counted in flight and never given back."""
        while self._count:
            for waiter in self._in_turn():
                if waiter.future.done():
                    continue
                replica = self._pick(waiter.exclude, waiter.ask)
                if replica is not None:
                    break
                if not waiter.exclude:
                    return  # none for it, nor for anyone after it (same or lower class)
            else:
                return
            self._remove(waiter, served=True)
            self._take(replica)
            waiter.future.set_result(replica)

    def make_room(self, ask: Ask, shed: Callable[[Ask], Exception]) -> bool:
        """Shed one waiter to let a request with ``ask`` in (the rule in the module's
        docstring); the shed one gets ``shed(its ask)``. False: none may be shed."""
        victim = None
        for rank in range(CLASSES - 1, ask.rank - 1, -1):
            tenants = {t: len(ws) for t, ws in self._classes[rank].items() if ws}
            if not tenants:
                continue
            largest = max(tenants, key=tenants.__getitem__)
            if rank > ask.rank or tenants[largest] >= tenants.get(ask.tenant, 0) + 2:
                victim = self._classes[rank][largest][-1]
            break
        if victim is None:
            return False
        self._remove(victim, served=False)
        victim.future.set_exception(shed(victim.ask))
        return True

    def _in_turn(self) -> Iterator[_Waiter]:
        for tenants in self._classes:
            for waiters in tenants.values():
                yield from waiters

    def _remove(self, waiter: _Waiter, served: bool) -> None:
        """Take ``waiter`` out; a tenant served goes to the end of its class's round."""
        tenants = self._classes[waiter.ask.rank]
        waiters = tenants[waiter.ask.tenant]
        waiters.remove(waiter)
        self._count -= 1
        if not waiters:
            del tenants[waiter.ask.tenant]
        elif served:
            tenants[waiter.ask.tenant] = tenants.pop(waiter.ask.tenant)

    def _queued(self, waiter: _Waiter) -> bool:
        waiters = self._classes[waiter.ask.rank].get(waiter.ask.tenant)
        return waiters is not None and waiter in waiters

    def _expire(self, waiter: _Waiter, timed_out: Callable[[], Exception]) -> None:
        if not waiter.future.done():
            self._remove(waiter, served=False)
            waiter.future.set_exception(timed_out())

    def _withdraw(self, waiter: _Waiter) -> None:
        if self._queued(waiter):
            self._remove(waiter, served=False)
        elif (
            waiter.future.done()
            and not waiter.future.cancelled()
            and waiter.future.exception() is None
        ):
            self._give_back(waiter.future.result())
