"""The reconcile loop: one per autoscaled pool, turning load into running replicas.

Level-triggered and idempotent, like a Kubernetes controller. Every tick (and early, on a
hint: demand on an empty pool, a driver event) it observes the pool's load and the
driver's replicas, asks the pure ``controller.Controller`` for a decision and
``scaling.plan`` for the difference, and has ``lifecycle.Lifecycle`` carry that out, one
replica at a time. Converged means no action at all. Nothing is
remembered between ticks that the next tick could not rebuild: a failed start or stop is
simply attempted again (after a backoff), a replica that exited or fails its health checks
is replaced.

A driver that fails (the Docker engine down or hung) stops nothing: the replicas in place
serve on, health verdicts still apply, starts and stops are retried with backoff, and the
state is logged when it changes, not each tick. What the driver lists that no member
accounts for (a create whose answer was lost) is removed.

Here: the loop, what it observes (adoption after a restart, the driver's listing, the
health verdicts, the driver's own failures), and what the pool and the metrics read of
it. A replica's life is ``lifecycle.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp

from gateway import config
from gateway.control.controller import Controller, Observation
from gateway.control.drivers import Driver, Instance
from gateway.control.failures import Outage, Strays
from gateway.control.gpus import GpuLedger
from gateway.control.keepalive import KeepAlive
from gateway.control.lifecycle import Lifecycle
from gateway.control.members import Member
from gateway.control.scaling import (
    REPLICA_STATES,
    Decision,
    ReplicaState,
    plan,
)
from gateway.control.startup import StartupTimes
from gateway.control.tiers import ORDER as TIERS
from gateway.control.tiers import Tier
from gateway.dataplane.pool import Pool
from gateway.recorder import NULL_RECORDER, Recorder

log = logging.getLogger(__name__)


class PoolAutoscaler:
    def __init__(
        self,
        pool: Pool,
        settings: config.Autoscale,
        driver: Driver,
        ledger: GpuLedger,
        session: aiohttp.ClientSession,
        clock: Callable[[], float],
        recorder: Recorder = NULL_RECORDER,
        state_dir: Path | None = None,
    ) -> None:
        self.pool = pool
        self.driver = driver
        self.ledger = ledger
        self.clock = clock
        self.recorder = recorder
        self.wake = asyncio.Event()
        self.decision: Decision | None = None
        self._counted_at = clock()  # replica-seconds are counted up to then
        self.control = Controller(settings, pool.tally, clock())
        kept = None if state_dir is None else state_dir / "startup" / f"{quote(pool.name, '')}.json"
        self.startup = StartupTimes(settings.expected_startup_s, kept)
        self.life = Lifecycle(pool, driver, ledger, session, clock, recorder, self.startup,
                              self.wake)  # fmt: skip
        self.members = self.life.members  # the same dict: what the loop decides over
        self.start_failures = self.life.start_failures
        self.apply(settings)
        self._outage = Outage()
        self._strays = Strays()

    def apply(self, settings: config.Autoscale) -> None:
        """Take new settings; replicas and the load history are kept."""
        self.settings = settings
        self.control.apply(settings)
        self.life.apply(settings)
        self.startup.seed_s = settings.expected_startup_s

    @property
    def wake_s(self) -> dict[Tier, float]:
        """The last wake time measured per warm tier."""
        return self.life.wake_s

    # -- what the pool sees of it (pool.Scaling) -------------------------------------------

    @property
    def cold_start(self) -> config.ColdStart:
        return self.settings.cold_start

    def on_demand(self) -> None:
        self.wake.set()

    @property
    def predicted_wait_p99_s(self) -> float | None:
        """Erlang C's p99 wait at the ready capacity (``controller.py``)."""
        return self.control.predicted_wait_p99_s

    @property
    def keep_alive(self) -> KeepAlive | None:
        """The keep-alive windows last learnt, if any."""
        return self.control.keep_alive

    def ready_in_s(self) -> float:
        """How soon the next replica is expected to be ready: the soonest start's (or
        wake's) remaining time (0 once overdue); if none is under way, the wake of the
        warmest replica held in a tier, or a whole start-up."""
        now = self.clock()
        etas = [m.since + m.expected_s - now for m in self.members.values()
                if m.state == "starting"]  # fmt: skip
        if etas:
            return max(0.0, min(etas))
        return self.life.revive_s()

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        while True:  # until the driver answers, nothing is known that a start could not double
            try:
                await self._adopt()
            except Exception as exc:
                self._driver_failed(exc)
            else:
                self._driver_answered()
                break
            await asyncio.sleep(self.settings.tick_s)
        while True:
            try:
                await self.tick()
            except Exception:  # the next tick retries; the loop must not die
                log.exception("pool %s: reconcile failed", self.pool.name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.tick_s):
                    await self.wake.wait()
            self.wake.clear()

    async def tick(self) -> None:
        now, pool = self.clock(), self.pool
        self._count_time(now)
        tally, service_s = pool.tally, pool.service_s  # before the listing's await
        await self._observe()
        seen = Observation(
            tally, service_s, pool.working, pool.queued, pool.is_cold, pool.quiet_since,
            pool.gaps, self.count["ready"],
            [m.since + m.expected_s - now for m in self.members.values()
             if m.state == "starting"],
            [r.slots for r in pool.replicas.values() if not r.draining],
            self.life.revive_s(),
        )  # fmt: skip
        self.decision = decision = self.control.decide(now, seen)
        views = [m.view(now) for m in self.members.values() if not m.busy]
        todo = plan(decision.desired, views)
        for rid in todo.remove:
            if self.members[rid].retry_at <= now:
                self.life.spawn(self.life.remove(self.members[rid], "failed"))
        for rid in todo.drain:
            self.life.spawn(self.life.drain(self.members[rid], decision.reason))
        for rid in todo.wake:
            self.life.wake(self.members[rid], decision.reason)
        if todo.start and now >= self.start_failures.until:
            await asyncio.gather(*(self.life.start(decision.reason) for _ in range(todo.start)))
        self.life.age_tiers(now)

    def _count_time(self, now: float) -> None:
        """Replica- and GPU-seconds since the last tick, by state: each member is taken
        to have held its state since then (an error of a tick at most per change)."""
        span_s, self._counted_at = now - self._counted_at, now
        held: dict[ReplicaState, tuple[int, int]] = {}
        allocated = self.ledger.allocated
        for m in self.members.values():
            replicas, gpus = held.get(m.state, (0, 0))
            held[m.state] = replicas + 1, gpus + len(allocated.get(m.replica_id, ()))
        for state, (replicas, gpus) in held.items():
            self.recorder.replica_time(self.pool.name, state, replicas * span_s, gpus * span_s)

    @property
    def count(self) -> dict[ReplicaState, int]:
        counts: dict[ReplicaState, int] = dict.fromkeys(REPLICA_STATES, 0)
        for member in self.members.values():
            counts[member.state] += 1
        return counts

    def drain(self, replica_id: str) -> bool:
        """Drain a ready replica on request (it is then replaced, as the plan sees one
        fewer); False if there is no such ready replica."""
        member = self.members.get(replica_id)
        if member is None or member.state != "ready" or member.busy:
            return False
        self.life.spawn(self.life.drain(member, "admin"))
        return True

    async def shutdown(self, stop_replicas: bool) -> None:
        """End the loop; with ``stop_replicas``, drain and remove every replica."""
        await self.life.cancel()
        if stop_replicas:
            members = [m for m in self.members.values() if m.instance is not None]
            await asyncio.gather(*(self.life.drain(m, "shutdown") for m in members))

    # -- observing ---------------------------------------------------------------------

    async def _adopt(self) -> None:
        """Take over the replicas a previous gateway left running, health-checked before
        use; anything else the driver lists for this pool (our labels and instance id: never
        another gateway's) is removed (no orphans)."""
        now = self.clock()
        for instance in await self.driver.list(self.pool.name):
            rid = instance.replica_id
            if rid in self.members:
                continue  # adopted by an earlier attempt that then failed
            usable = instance.state == "running" and instance.url is not None
            paused = instance.state == "paused" and self.life.tiers is not None
            if (usable or paused) and self.ledger.adopt(rid, instance.gpu_ids):
                member = Member(rid, "starting", now, instance)
                self.members[rid] = member
                if paused:
                    member.state, member.tier_since = "paused", now
                else:
                    self.life.spawn(self._adopted(member))
                log.info("pool %s: adopted replica %s (%s)", self.pool.name, rid, member.state)
            else:
                log.info("pool %s: removing leftover replica %s", self.pool.name, rid)
                await self.life.stop_instance(instance)

    async def _adopted(self, member: Member) -> None:
        """An adopted running replica may be one a previous gateway put to sleep
        (nothing tells it apart): with the asleep tier on, it is woken before use."""
        if (
            self.life.tiers is not None
            and self.life.tiers.asleep_s > 0
            and member.instance is not None
        ):
            with contextlib.suppress(Exception):  # awake already, or no such engine: fine
                await self.life.engine_call(member.instance, "/wake_up")
        await self.life.await_ready(member)

    async def _observe(self) -> None:
        """Mark members whose replica exited, vanished or went unhealthy as failed (one
        that exits before it was ever ready is a failed start, and backs off); remove
        what the driver lists that no member accounts for. While the driver fails, only
        the health verdicts are news: the rest stays as it was last seen."""
        seen: dict[str, Instance] | None = None
        try:
            seen = {i.replica_id: i for i in await self.driver.list(self.pool.name)}
        except Exception as exc:
            self._driver_failed(exc)
        else:
            self._driver_answered()
        for member in list(self.members.values()):
            if member.instance is None or member.busy or member.state == "failed":
                continue  # a start is in flight, or a drain/removal owns it
            instance = None if seen is None else seen.get(member.replica_id)
            if member.state in TIERS:  # held: nothing to check but that it is still there
                if seen is not None and instance is None:
                    log.warning("pool %s: held replica %s is gone", self.pool.name,
                                member.replica_id)  # fmt: skip
                    self.ledger.release(member.replica_id)
                    del self.members[member.replica_id]
                elif member.state != "stopped" and instance and instance.state == "exited":
                    member.busy = True  # died while held: nothing left to wake
                    self.life.spawn(self.life.remove(member, "failed"))
                continue
            if seen is not None and (instance is None or instance.state == "exited"):
                if member.state == "starting":
                    self.life.start_failed("exited", member.replica_id)
                elif member.crashed_early(self.clock()):
                    self.life.start_failed("crashed", member.replica_id)
                self.life.fail(member, "exited")
            elif member.replica is not None and not member.replica.health.up:
                if member.crashed_early(self.clock()):
                    self.life.start_failed("crashed", member.replica_id)
                self.life.fail(member, "unhealthy")
            elif self.start_failures.count and member.crashed_early(self.clock()) is False:
                self.start_failures.stayed_up()
        if seen is not None:
            for rid, first in self._strays.due(seen, self.members):
                if first:
                    log.warning("pool %s: removing replica %s: no start accounts for it",
                                self.pool.name, rid)  # fmt: skip
                self.life.spawn(self._remove_stray(seen[rid]))

    async def _remove_stray(self, instance: Instance) -> None:
        try:
            await self.life.stop_instance(instance)
        except Exception as exc:  # listed again, and tried again
            log.debug("pool %s: removing %s failed: %s", self.pool.name, instance.replica_id, exc)
        finally:
            self._strays.removed(instance.replica_id)

    def _driver_failed(self, exc: Exception) -> None:
        """Listing the pool failed: logged when the driver begins to fail, not each time.
        (The listing, made each tick, is what tells a driver that is down.)"""
        self.recorder.driver_error(self.pool.name)
        if self._outage.failed(self.clock()):
            log.warning(
                "pool %s: driver unavailable (%s: %s); the replicas in place serve on, "
                "starts and stops are retried with backoff",
                self.pool.name, type(exc).__name__, exc,
            )  # fmt: skip

    def _driver_answered(self) -> None:
        """A driver listing succeeded: if the driver was failing, it is back, and starts
        that failed for want of it need not wait out their backoff."""
        ended = self._outage.answered(self.clock())
        if ended is None:
            return
        log.info("pool %s: driver available again after %.1f s (%d failed calls)",
                 self.pool.name, *ended)  # fmt: skip
        self.start_failures.driver_back()
