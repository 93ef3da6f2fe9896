"""The pool: a named set of replicas, the slots on them, and the queue for those slots.

This is where the data plane and the control plane meet. Requests ``acquire`` a replica
(waiting in a bounded FIFO queue when every eligible replica is at its slot cap) and
``release`` it with the outcome; discovery swaps in whole replica snapshots; the prober
and the proxy's outcomes feed each replica's health and its concurrency limit. The pool
also keeps what hedging needs: the pool's recent response heads (each replica keeps its own),
and the budget for backup attempts, which take a free slot or none (``try_hedge``).

Invariants:
* a replica whose engine says it queues (engine signals, fresh) takes nothing more while
  the gateway has a request on it, nor more than its engine's batch as learnt
  (``replica.learn_batch``): beyond the engine's own slots, requests wait here;
* while critical requests come, the lower classes leave the pool's reserve free
  (``reserve.py``): a critical request finds a slot on arrival, not at the next release;
* a replica's ``working`` count never exceeds its ``cap``: its learnt concurrency limit
  (``limits.py``) under the configured ``max_inflight_per_replica``, or that number
  itself with ``concurrency_limit: fixed``. The cap is hard: above it, requests wait
  here, not inside the replica. An answer parked on a client that reads none of it
  (``park``) is not work: it holds no slot, so slow readers cannot lock a replica;
* a freed slot goes straight to a waiter that may use it (no herd): the highest class
  first, tenants in turn, each tenant's oldest first (``queue.py``);
* the policy only ever picks eligible replicas: routable, not draining, below the cap (it
  is also told which routable ones are full, to weigh waiting for them);
  when no replica is routable at all the pool fails open and treats every non-draining
  replica as routable, since refusing everything is worse than trying a suspect replica;
* passive ejection never takes more than ``max_ejected_percent`` of the replicas out, and
  ejections that hedging caused (a replica that hung under its backups) never more than
  ``HEDGE_EJECTED_PERCENT``: hedging may find a hung replica, never empty a pool.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from gateway import config
from gateway.dataplane.admission import ServiceTime, expected_wait_s, retry_after_s
from gateway.dataplane.health import HealthRules
from gateway.dataplane.hedging import Window, hedge_delay
from gateway.dataplane.limits import ConcurrencyLimit
from gateway.dataplane.policies import Policy
from gateway.dataplane.priority import CRITICAL, SHEDDABLE
from gateway.dataplane.queue import PLAIN, Ask, SlotQueue
from gateway.dataplane.replica import (
    ENGINE_BATCH_S,
    EngineLoad,
    Replica,
    engine_queues,
    fresh_engine,
    learn_batch,
)
from gateway.dataplane.reserve import Reserve
from gateway.dataplane.retry import RetryBudget
from gateway.recorder import NULL_RECORDER, Recorder

log = logging.getLogger(__name__)

HEDGE_RESERVE_PER_S = 1.0  # hedges allowed on top of the ratio, so a quiet pool can hedge too
HEDGE_EJECTED_PERCENT = 25.0  # most replicas out at once for hanging under hedges (>= 1)
GAPS_KEPT = 256  # quiet spells remembered


class NoCapacity(Exception):
    """No slot could be had; the client gets ``status`` with ``Retry-After``."""

    def __init__(self, reason: str, retry_after_s: int, status: int = 503) -> None:
        super().__init__(reason)
        self.reason = reason  # queue_full, queue_timeout, cold_start_full, no_replica, shed
        self.retry_after_s = retry_after_s
        self.status = status  # 503, or 429 for a sheddable request


class Scaling(Protocol):
    """What an autoscaler managing the pool offers it: the bounds for requests that wait
    on an empty pool, how soon its next replica is expected to be ready, and a wake-up
    for demand there."""

    @property
    def cold_start(self) -> config.ColdStart: ...
    def ready_in_s(self) -> float: ...
    def on_demand(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Tally:
    """A pool's running totals, for the autoscaler's demand (``control/demand.py``)."""

    arrivals: int  # client requests that came to the pool
    answers: int  # slots given back
    busy_s: float  # slot-seconds held on replicas, parked answers not counted


class Pool:
    def __init__(
        self,
        name: str,
        settings: config.Pool,
        policy: Policy,
        clock: Callable[[], float],
        recorder: Recorder = NULL_RECORDER,
    ) -> None:
        self.name = name
        self.policy = policy
        self.clock = clock
        self.recorder = recorder
        self.replicas: dict[str, Replica] = {}
        self.scaling: Scaling | None = None  # the autoscaler managing it (``attach``)
        self._idle: dict[str, asyncio.Future[None]] = {}  # draining replica id -> drained
        self.retry_budget = RetryBudget(clock)
        self.hedge_budget = RetryBudget(clock, min_per_s=HEDGE_RESERVE_PER_S)
        self._heads = Window()  # the pool's recent response heads: its hedge delay
        self.waits = Window()  # recent waits for a slot, 0 for none: the measured quantiles
        self._limits: dict[str, ConcurrencyLimit] = {}  # replica id -> learnt limit
        self._reserve = Reserve()  # slots the lower classes leave free for critical ones
        self._arrivals = self._answers = 0  # the running totals of ``tally``
        self._working = 0  # requests in flight on replicas, parked ones not counted
        self._busy_s, self._busy_at = 0.0, clock()  # the integral of ``_working`` up to then
        self._service = ServiceTime(self.tally)
        self.quiet_since: float | None = clock()  # nothing worked on nor queued since then
        self.gaps: deque[float] = deque(maxlen=GAPS_KEPT)  # recent quiet spells, ended by
        # an arrival: what the autoscaler's keep-alive learns from (``control/keepalive.py``)
        self._queue = SlotQueue(
            lambda exclude, ask: self._pick(exclude, ask=ask), self._start, self.abandon
        )
        self.apply(settings)

    def attach(self, scaling: Scaling | None) -> None:
        """An autoscaler takes the pool over (None: it is static again)."""
        self.scaling = scaling

    def use_policy(self, policy: Policy) -> None:
        """Switch routing policy (on reload); the new one learns from scratch."""
        self.policy = policy

    def apply(self, settings: config.Pool) -> None:
        """Take new limits; replicas, in-flight requests and the queue are kept."""
        self.settings = settings
        self.max_inflight = settings.max_inflight_per_replica
        self.adaptive = settings.concurrency_limit == "auto"
        for replica in self.replicas.values():
            self._limits[replica.id].set_ceiling(self.max_inflight)
            self._set_cap(replica)
        self.rules = HealthRules(
            rise=settings.health.healthy_threshold,
            fall=settings.health.unhealthy_threshold,
            consecutive_failures=settings.outlier.consecutive_failures,
            base_ejection_s=settings.outlier.base_ejection_s,
            max_ejection_s=settings.outlier.max_ejection_s,
        )
        self.retry_budget.percent = settings.retries.budget_percent
        self.retry_budget.min_per_s = settings.retries.min_retries_per_s
        self.hedge_budget.percent = settings.hedging.max_extra_percent
        self._queue.dispatch()

    # -- membership -------------------------------------------------------------------

    def set_replicas(self, snapshot: Iterable[Replica]) -> None:
        """Swap in a whole snapshot; replicas already known keep their state."""
        wanted = {r.id: r for r in snapshot}
        if wanted.keys() == self.replicas.keys():
            return
        for rid in [rid for rid in self.replicas if rid not in wanted]:
            gone = self.replicas.pop(rid)
            gone.draining = True  # its in-flight requests finish; nothing new reaches it
            self.policy.forget(rid)
            del self._limits[rid]
        for rid, replica in wanted.items():
            if rid not in self.replicas:
                self.replicas[rid] = replica
                self._limits[rid] = ConcurrencyLimit(self.max_inflight)
                self._set_cap(replica)
        self._queue.dispatch()

    # -- load figures (read by metrics and, later, the autoscaler) ----------------------

    @property
    def inflight(self) -> int:
        return sum(r.inflight for r in self.replicas.values())

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def working(self) -> int:
        """Requests the replicas work on (in flight, parked answers not counted)."""
        return self._working

    @property
    def tally(self) -> Tally:
        """The running totals the autoscaler's demand is measured from."""
        self._count_busy()
        return Tally(self._arrivals, self._answers, self._busy_s)

    @property
    def service_s(self) -> float | None:
        """The mean time an answer holds a slot (``admission.ServiceTime``); None until
        the first answer."""
        return self._service.update(self.tally)

    @property
    def is_cold(self) -> bool:
        """An autoscaled pool with no live replica: requests wait for one to start."""
        return self.scaling is not None and not self.has_alternative(frozenset())

    # -- the request path ---------------------------------------------------------------

    def record_request(self) -> None:
        """A client request arrived: the base of the retry and hedge budgets, and of the
        autoscaler's demand."""
        self._arrivals += 1
        if self.quiet_since is not None:
            self.gaps.append(self.clock() - self.quiet_since)
            self.quiet_since = None
        self.retry_budget.record_request()
        self.hedge_budget.record_request()

    def hedge_after(self, replica: Replica | None = None) -> float | None:
        """How long an attempt on ``replica`` may wait for its response head before it
        gets a backup (``hedging.hedge_delay``; None for the pool's own figure alone);
        None: no hedging (off, or too few heads seen yet to know the pool's tail)."""
        hedging = self.settings.hedging
        if not hedging.enabled:
            return None
        own = None if replica is None else replica.health.heads
        return hedge_delay(self._heads, own, 100.0 - hedging.max_extra_percent,
                           hedging.min_delay_s)  # fmt: skip

    def try_hedge(self, exclude: frozenset[str]) -> Replica | None:
        """A reserved slot for a backup attempt, if a replica outside ``exclude`` has one
        idle now (fewer in flight than it surely serves at once: its knee once found,
        else none; a backup queued inside a busy replica only adds work where it cannot
        win) and the hedge budget has room. A hedge never queues: it must not take a
        slot from a request that is waiting for one."""
        if not self.hedge_budget.allows_retry():
            return None
        replica = self._pick(exclude, idle_only=True)
        if replica is None:
            return None
        self.hedge_budget.try_retry()
        self._start(replica)
        return replica

    def has_alternative(self, exclude: frozenset[str]) -> bool:
        """Is there a non-draining replica outside ``exclude`` (busy or not)?"""
        return any(not r.draining and r.id not in exclude for r in self.replicas.values())

    @property
    def reads_prompt(self) -> bool:
        """Does its policy route by the prompt (``acquire``'s ``prompt``)?"""
        return self.policy.reads_prompt

    async def acquire(self, exclude: frozenset[str] = frozenset(), ask: Ask = PLAIN) -> Replica:
        """A replica with a slot reserved for the caller, who must ``release`` it. ``ask``:
        the request's prompt blocks (for a policy that reads them), class and tenant,
        which order the queue. A sheddable request is refused (429) when
        ``queue.sheddable_max_waiting`` requests wait already; a full queue sheds a
        waiter to let a request in where ``SlotQueue.make_room`` allows it. A request
        with a deadline that must wait is refused at once if its expected wait is longer
        (``admission.py``), and waits no longer than it."""
        if ask.rank == CRITICAL and not exclude:
            self._reserve.critical.add(self.clock())
        replica = self._pick(exclude, len(self._queue), ask=ask)
        if replica is not None:
            self._start(replica)
            self.waits.add(0.0)
            return replica
        if exclude and not self.has_alternative(exclude):
            raise NoCapacity("no_replica", 1)
        scaling = self.scaling if self.is_cold else None
        cold = scaling is not None
        if scaling is not None:  # from zero: wait for the first replica, under cold-start
            scaling.on_demand()  # bounds; a request refused below is demand too
            bounds = scaling.cold_start
            limit, timeout_s = bounds.max_waiting, bounds.timeout_s
        else:
            limit, timeout_s = self.settings.queue.max_size, self.settings.queue.timeout_s
            if (
                ask.rank == SHEDDABLE
                and len(self._queue) >= self.settings.queue.sheddable_max_waiting
            ):
                raise self._refusal("shed", ask)
        if ask.deadline_s is not None:
            self._admit(ask, ask.deadline_s, scaling)
            timeout_s = min(timeout_s, ask.deadline_s)
        if len(self._queue) >= limit and (cold or not self._queue.make_room(ask, self._shed)):
            raise self._refusal("cold_start_full" if cold else "queue_full", ask)
        since = self.clock()
        replica = await self._queue.wait(
            exclude, ask, timeout_s, lambda: NoCapacity("queue_timeout", self._retry_after())
        )
        waited_s = self.clock() - since
        self.recorder.queue_wait(self.name, waited_s)
        self.waits.add(waited_s)
        return replica

    def _admit(self, ask: Ask, deadline_s: float, scaling: Scaling | None) -> None:
        """Refuse a request that must wait, now, if it is expected to wait past its
        deadline; ``scaling``: the autoscaler of a pool that is cold, else None."""
        wait_s = expected_wait_s(
            self._queue.ahead_of(ask.rank), self._slots(), self.service_s,
            None if scaling is None else scaling.ready_in_s(),
        )  # fmt: skip
        if wait_s > deadline_s:
            raise self._refusal("deadline", ask, retry_after_s(wait_s, deadline_s))

    def _refusal(self, reason: str, ask: Ask, retry_after: int | None = None) -> NoCapacity:
        """A sheddable request is refused with 429 (asked to come back), others with 503."""
        status = 429 if ask.rank == SHEDDABLE else 503
        return NoCapacity(reason, retry_after or self._retry_after(), status)

    def _shed(self, ask: Ask) -> NoCapacity:
        """What a waiter shed to make room gets (its request counts it as rejected)."""
        return self._refusal("shed", ask)

    def engine_read(self, replica: Replica, before: EngineLoad | None) -> None:
        """New engine figures came in for ``replica`` (``before``: the ones they replace):
        learn its batch size from them; an engine that stopped queueing may take a waiter."""
        if replica.engine is not None:
            replica.engine_batch = learn_batch(replica.engine_batch, before, replica.engine)
        self._queue.dispatch()

    def release(
        self,
        replica: Replica,
        latency_s: float,
        status: int | None,
        level: int | None = None,
        kind: str = "",
    ) -> None:
        """Return a slot with the attempt's outcome (``status`` None: no response at all);
        ``level``: the replica's in-flight count when the attempt was sent (None: take
        the count now) and ``kind`` the request's path, which its concurrency limit
        learns from."""
        now = self.clock()
        failed = status is None or status >= 500
        level = replica.inflight if level is None else level
        # what the policy learns is the replica's speed: the queueing inside it that its
        # in-flight count explains (k requests on c slots take about k / c as long) is
        # the load term's to price, not the estimate's, or a replica that was sent too
        # much would look slow after it drained and idle while others queue
        speed_s = latency_s / max(1.0, level / replica.slots)
        if not failed:
            self._heads.add(latency_s)
            replica.health.record_head(latency_s, now)
            limit = self._limits.get(replica.id)
            if limit is not None:  # None: the replica left the pool
                limit.record(latency_s, level, now, kind)
                self._set_cap(replica)
        self._free(replica)
        self.policy.on_end(replica, speed_s, not failed and status != 429)
        self._record(replica, not failed, now, self._may_eject(now) if failed else False)
        self._queue.dispatch()

    def park(self, replica: Replica, parked: bool) -> None:
        """One of ``replica``'s answers waits for its client to read (``parked``), or goes
        on. While parked it counts in ``inflight`` but not against the cap, nor in the
        in-flight level the replica's limit learns from: the replica is waiting on the
        client, not working, and counted it would let a client that never reads hold the
        slot and, with any noise in latency, cut the limit to what the readers hold."""
        self._count_busy()
        if parked:
            replica.parked += 1
            self._working -= 1
            self._queue.dispatch()
            self._note_quiet()
        else:
            replica.parked -= 1
            self._working += 1
            self.quiet_since = None

    def outrun(self, replica: Replica, waited_s: float) -> None:
        """Return the slot of an attempt whose hedge's backup answered first, after it had
        waited ``waited_s``. The replica took at least that long, which the policy learns
        as it would the answer (a censored one: the real answer would have come later);
        it is a failure of the replica only if the replica hung (``health.hung``), and
        ejections for it stay under ``HEDGE_EJECTED_PERCENT``."""
        now = self.clock()
        hung = replica.health.hung(waited_s, now)
        self._free(replica)
        self.policy.on_end(replica, waited_s, not hung)
        if hung:
            may_eject = self._may_eject(now) and self._may_eject_for_hedging(now)
            self._record(replica, False, now, may_eject, by_hedging=True)
        self._queue.dispatch()

    def start_probe(self, replica: Replica) -> bool:
        """May an attempt on ``replica`` that a hedge outran run on as its probe? At most
        one at a time per replica; its slot stays taken until ``end_probe``."""
        if replica.probing:
            return False
        replica.probing = True
        return True

    def end_probe(
        self, replica: Replica, latency_s: float, status: int | None, level: int, kind: str
    ) -> None:
        """The probe's outcome, learnt as any answer's (``release``)."""
        replica.probing = False
        self.release(replica, latency_s, status, level, kind)

    def _record(
        self, replica: Replica, ok: bool, now: float, may_eject: bool, by_hedging: bool = False
    ) -> None:
        """Feed one outcome to the replica's passive health; log an ejection."""
        if replica.health.record_request(ok, now, self.rules, may_eject, by_hedging):
            self.recorder.ejection(self.name, replica.id)
            until = replica.health.ejected_until - now
            log.info("pool %s: ejected replica %s for %.0f s", self.name, replica.id, until)

    def abandon(self, replica: Replica) -> None:
        """Return a slot whose attempt produced no outcome worth learning from."""
        self._free(replica)
        self._queue.dispatch()

    def record_probe(self, replica: Replica, ok: bool) -> None:
        if replica.health.record_probe(ok, self.rules):
            self.recorder.health_changed(self.name, replica.id, replica.health.up)
            if replica.health.up:  # back from down: what was learnt of it is stale
                self.policy.forget(replica.id)
                self._limits[replica.id] = ConcurrencyLimit(self.max_inflight)
                self._set_cap(replica)
            state = "up" if replica.health.up else "down"
            log.info("pool %s: replica %s is %s", self.name, replica.id, state)
            self._queue.dispatch()

    def drain(self, replica_id: str) -> bool:
        """Take a replica out of rotation: its requests in flight finish, no new one
        reaches it (``wait_drained``). False when it is not in the pool."""
        replica = self.replicas.get(replica_id)
        if replica is None:
            return False
        replica.draining = True
        return True

    async def wait_drained(self, replica: Replica, timeout_s: float) -> bool:
        """Wait until a draining replica has no request in flight; False on timeout."""
        if replica.inflight:
            future = self._idle.setdefault(replica.id, asyncio.get_running_loop().create_future())
            try:
                await asyncio.wait_for(asyncio.shield(future), timeout_s)
            except TimeoutError:
                return False
        return True

    # -- internals ----------------------------------------------------------------------

    def _free(self, replica: Replica) -> None:
        """One slot less in use; a draining replica that has none left is drained."""
        self._count_busy()
        replica.inflight -= 1
        self._working -= 1
        self._answers += 1
        self._reserve.freed.add(self.clock())
        if replica.draining and not replica.inflight:
            self._drained(replica)
        self._note_quiet()

    def _note_quiet(self) -> None:
        """A quiet spell begins when nothing is worked on and nothing waits."""
        if not self._working and not self._queue and self.quiet_since is None:
            self.quiet_since = self.clock()

    def _drained(self, replica: Replica) -> None:
        future = self._idle.pop(replica.id, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _set_cap(self, replica: Replica) -> None:
        limit = self._limits[replica.id]
        if self.adaptive:
            replica.cap, replica.slots = limit.value, limit.concurrency
            replica.sure_slots = limit.concurrency if limit.found else 1.0
        else:
            replica.cap = self.max_inflight
            replica.slots = float(self.max_inflight)  # a cap the operator set, not a knee

    def _pick(
        self,
        exclude: frozenset[str],
        ahead: int = 0,
        idle_only: bool = False,
        ask: Ask = PLAIN,
    ) -> Replica | None:
        """The policy's choice among the routable replicas outside ``exclude`` that have
        a free slot (``idle_only``: one under its sure slots, not only under its cap),
        told which are full and how many requests wait ``ahead``. A request below the
        critical class gets none that would leave fewer free than the reserve."""
        now = self.clock()
        live = [r for r in self.replicas.values() if not r.draining]
        routable = [r for r in live if r.health.routable(now)] or live  # fail open
        candidates: list[Replica] = []
        full: list[Replica] = []
        slots = free = 0.0
        for r in routable:
            room = self._room(r, now, idle_only)
            # an engine that says it queues is full too, if some of that is ours: the
            # request waits here, where its class and tenant order it, not in there
            working = r.working
            busy = working >= room or (r.inflight > 0 and engine_queues(r, now))
            slots += room
            free += 0 if busy else room - working
            if r.id not in exclude:
                (full if busy else candidates).append(r)
        if not candidates:
            return None
        if ask.rank != CRITICAL and free <= self._reserve.slots(now, math.floor(slots)):
            return None
        return self.policy.pick(candidates, full, ahead, ask.prompt)

    def _room(self, replica: Replica, now: float, idle_only: bool) -> float:
        """How many requests ``replica`` may have in flight: its cap (its sure slots for
        ``idle_only``), and no more than its engine's batch where that is known."""
        room = replica.sure_slots if idle_only else float(replica.cap)
        batch = replica.engine_batch
        if batch is not None and now - batch.at <= ENGINE_BATCH_S and fresh_engine(replica, now):
            room = min(room, batch.size)
        return room

    def _start(self, replica: Replica) -> None:
        self._count_busy()
        replica.inflight += 1
        self._working += 1
        self.quiet_since = None  # (a retry's slot: no arrival, so no spell recorded)
        replica.health.unanswered += 1
        self.policy.on_start(replica)

    def _count_busy(self) -> None:
        """Bring the slot-seconds up to now, before the count of working requests moves."""
        now = self.clock()
        self._busy_s += self._working * (now - self._busy_at)
        self._busy_at = now

    def _may_eject(self, now: float) -> bool:
        ejected = sum(1 for r in self.replicas.values() if r.health.ejected(now))
        limit = math.floor(len(self.replicas) * self.settings.outlier.max_ejected_percent / 100)
        return ejected + 1 <= limit

    def _may_eject_for_hedging(self, now: float) -> bool:
        health = [r.health for r in self.replicas.values()]
        ejected = sum(1 for h in health if h.ejected(now) and h.ejected_by_hedging)
        limit = max(1, math.floor(len(health) * HEDGE_EJECTED_PERCENT / 100))
        return len(health) > 1 and ejected + 1 <= limit

    def _slots(self) -> int:
        """The slots of the replicas that take requests: their caps."""
        return sum(r.cap for r in self.replicas.values() if not r.draining)

    def _retry_after(self) -> int:
        """A hint: the time to the next replica's expected readiness while cold, else
        one second per full round of slots queued."""
        if self.is_cold:
            assert self.scaling is not None
            return max(1, math.ceil(self.scaling.ready_in_s()))
        return max(1, math.ceil(len(self._queue) / max(1, self._slots())))
