"""The reconcile loop: one per autoscaled pool, turning load into running replicas.

Level-triggered and idempotent, like a Kubernetes controller. Every tick (and early, on a
hint: demand on an empty pool, a driver event) it observes the pool's load and the
driver's replicas, asks the pure ``scaling.Scaler`` for a decision and ``scaling.plan``
for the difference, and carries that out. Converged means no action at all. Nothing is
remembered between ticks that the next tick could not rebuild: a failed start or stop is
simply attempted again (after a backoff), a replica that exited or fails its health checks
is replaced.

A driver that fails (the Docker engine down or hung) stops nothing: the replicas in place
serve on, health verdicts still apply, starts and stops are retried with backoff, and the
state is logged when it changes, not each tick. What the driver lists that no member
accounts for (a create whose answer was lost) is removed.

A replica's life: ``starting`` (created; its health path is polled) -> ``ready`` (in the
pool, taking requests) -> ``draining`` (no new requests; waits for in-flight ones up to
``drain_timeout_s``) -> stopped and removed. ``failed`` replicas are removed and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from gateway import config
from gateway.control.backoff import backoff, retrying
from gateway.control.controller import Controller, Observation
from gateway.control.drivers import Driver, Instance, ReplicaSpec
from gateway.control.failures import Outage, StartFailures, Strays
from gateway.control.gpus import GpuLedger
from gateway.control.keepalive import KeepAlive
from gateway.control.members import Member
from gateway.control.readiness import await_ready
from gateway.control.scaling import (
    REPLICA_STATES,
    Decision,
    ReplicaState,
    plan,
)
from gateway.control.startup import StartupTimes
from gateway.control.tiers import ORDER as TIERS
from gateway.control.tiers import Tier, TierRules
from gateway.dataplane.pool import Pool
from gateway.dataplane.replica import Replica
from gateway.recorder import NULL_RECORDER, Recorder

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0  # SIGTERM grace for a replica that has already drained
PAUSED_WAKE_S = 0.5  # a paused replica's expected wake, until one is measured
KEEP_NOTHING = frozenset({"admin", "shutdown"})  # drains that hold nothing in a tier
MAX_BACKOFF_S = 60.0  # the cap of the pause between failed starts, and between failed stops


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
        self.session = session
        self.clock = clock
        self.recorder = recorder
        self.members: dict[str, Member] = {}
        self.wake = asyncio.Event()
        self.decision: Decision | None = None
        self._counted_at = clock()  # replica-seconds are counted up to then
        self.control = Controller(settings, pool.tally, clock())
        kept = None if state_dir is None else state_dir / "startup" / f"{quote(pool.name, '')}.json"
        self.startup = StartupTimes(settings.expected_startup_s, kept)
        self.wake_s: dict[Tier, float] = {"paused": PAUSED_WAKE_S}  # the last wake, per tier
        self.apply(settings)
        self.start_failures = StartFailures(MAX_BACKOFF_S)  # reset once one stays up
        self._outage = Outage()
        self._strays = Strays()
        self._tasks: set[asyncio.Task[None]] = set()

    def apply(self, settings: config.Autoscale) -> None:
        """Take new settings; replicas and the load history are kept."""
        self.settings = settings
        self.control.apply(settings)
        self.startup.seed_s = settings.expected_startup_s
        tiers = settings.tiers
        self.tiers = None if tiers is None else TierRules(
            tiers.paused_s, tiers.asleep_s, tiers.stopped_s, tiers.max_warm,
            self.driver.tiers | {"asleep"},  # asleep: the engine's, as the config says
        )  # fmt: skip

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
        return self._revive_s()

    def _revive_s(self) -> float:
        """How soon a replica asked for now would be ready: the wake of the warmest one
        held, or a whole start-up."""
        held = [tier for m in self.members.values() if (tier := _tier(m)) is not None]
        return self._wake_expected(min(held, key=TIERS.index)) if held else self.startup.expected_s

    def _wake_expected(self, tier: Tier) -> float:
        return self.wake_s.get(tier, self.startup.expected_s)

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
            self._revive_s(),
        )  # fmt: skip
        self.decision = decision = self.control.decide(now, seen)
        views = [m.view(now) for m in self.members.values() if not m.busy]
        todo = plan(decision.desired, views)
        for rid in todo.remove:
            if self.members[rid].retry_at <= now:
                self._spawn(self._remove(self.members[rid], "failed"))
        for rid in todo.drain:
            self._spawn(self._drain(self.members[rid], decision.reason))
        for rid in todo.wake:
            self._wake(self.members[rid], decision.reason)
        if todo.start and now >= self.start_failures.until:
            await asyncio.gather(*(self._start(decision.reason) for _ in range(todo.start)))
        self._age_tiers(now)

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
        self._spawn(self._drain(member, "admin"))
        return True

    async def shutdown(self, stop_replicas: bool) -> None:
        """End the loop; with ``stop_replicas``, drain and remove every replica."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if stop_replicas:
            members = [m for m in self.members.values() if m.instance is not None]
            await asyncio.gather(*(self._drain(m, "shutdown") for m in members))

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
            paused = instance.state == "paused" and self.tiers is not None
            if (usable or paused) and self.ledger.adopt(rid, instance.gpu_ids):
                member = Member(rid, "starting", now, instance)
                self.members[rid] = member
                if paused:
                    member.state, member.tier_since = "paused", now
                else:
                    self._spawn(self._adopted(member))
                log.info("pool %s: adopted replica %s (%s)", self.pool.name, rid, member.state)
            else:
                log.info("pool %s: removing leftover replica %s", self.pool.name, rid)
                await self._stop_instance(instance)

    async def _adopted(self, member: Member) -> None:
        """An adopted running replica may be one a previous gateway put to sleep
        (nothing tells it apart): with the asleep tier on, it is woken before use."""
        if self.tiers is not None and self.tiers.asleep_s > 0 and member.instance is not None:
            with contextlib.suppress(Exception):  # awake already, or no such engine: fine
                await self._engine_call(member.instance, "/wake_up")
        await self._await_ready(member)

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
                    self._spawn(self._remove(member, "failed"))
                continue
            if seen is not None and (instance is None or instance.state == "exited"):
                if member.state == "starting":
                    self._start_failed("exited", member.replica_id)
                elif member.crashed_early(self.clock()):
                    self._start_failed("crashed", member.replica_id)
                self._fail(member, "exited")
            elif member.replica is not None and not member.replica.health.up:
                if member.crashed_early(self.clock()):
                    self._start_failed("crashed", member.replica_id)
                self._fail(member, "unhealthy")
            elif self.start_failures.count and member.crashed_early(self.clock()) is False:
                self.start_failures.stayed_up()
        if seen is not None:
            for rid, first in self._strays.due(seen, self.members):
                if first:
                    log.warning("pool %s: removing replica %s: no start accounts for it",
                                self.pool.name, rid)  # fmt: skip
                self._spawn(self._remove_stray(seen[rid]))

    async def _remove_stray(self, instance: Instance) -> None:
        try:
            await self._stop_instance(instance)
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

    def _fail(self, member: Member, why: str) -> None:
        log.warning("pool %s: replica %s %s; replacing it", self.pool.name, member.replica_id, why)
        member.state = "failed"
        if member.replica is not None:
            self.pool.drain(member.replica.id)
        self._publish()

    # -- acting ------------------------------------------------------------------------

    async def _start(self, reason: str) -> None:
        settings = self.settings
        rid = f"{self.pool.name}-{secrets.token_hex(4)}"
        gpus = self.ledger.allocate(rid, settings.gpus_per_replica)
        if gpus is None:
            log.warning(
                "pool %s: needs %d GPU(s) per replica, %d free of %d; not starting",
                self.pool.name, settings.gpus_per_replica, len(self.ledger.free),
                self.ledger.total,
            )  # fmt: skip
            self.recorder.start_failed(self.pool.name, "no_gpu")
            return
        spec = ReplicaSpec(
            pool=self.pool.name,
            replica_id=rid,
            image=settings.image,
            command=settings.command,
            port=settings.port,
            env=settings.env,
            network=settings.network,
            gpu_ids=gpus,
        )
        member = Member(rid, "starting", self.clock(), expected_s=self.startup.expected_s)
        self.members[rid] = member
        try:
            async for attempt in retrying():
                with attempt:
                    member.instance = await self.driver.start(spec)
        except Exception as exc:
            del self.members[rid]
            self.ledger.release(rid)
            self._start_failed("driver", f"{type(exc).__name__}: {exc}", exc)
            return
        log.info("pool %s: starting replica %s (%s)", self.pool.name, rid, reason)
        self.recorder.scale_event(self.pool.name, "start", reason)
        self._spawn(self._await_ready(member))

    async def _await_ready(self, member: Member, woken: Tier | None = None) -> None:
        """Poll the replica's health path until it answers 2xx, then add it to the pool;
        the time it took is a start-up time, or the wake time of the tier it was
        ``woken`` from."""
        health = self.pool.settings.health
        url = await await_ready(
            self.session, lambda: self._url_of(member), health.path, health.timeout_s,
            member.since + self.settings.startup_timeout_s, self.clock,
            lambda: member.state == "starting",
        )  # fmt: skip
        if member.state != "starting":
            return
        if url is None:
            self._start_failed("startup_timeout", member.replica_id)
            self._fail(member, "did not become healthy in time")
            return
        member.ready_at = self.clock()
        startup_s = member.ready_at - member.since
        if woken is None:
            self.startup.add(startup_s)
            self.recorder.replica_ready(self.pool.name, startup_s)
        else:
            self.wake_s[woken] = startup_s
            self.recorder.replica_woken(self.pool.name, woken, startup_s)
        member.state = "ready"
        member.replica = Replica(id=member.replica_id, url=url)
        self._publish()
        how = "ready" if woken is None else f"awake from {woken}"
        log.info("pool %s: replica %s %s after %.3f s", self.pool.name, url, how, startup_s)
        self.wake.set()  # requests may be waiting, and the plan may change

    def _start_failed(self, reason: str, detail: str, exc: BaseException | None = None) -> None:
        """Count the failure, which pauses the next start (``StartFailures``)."""
        pause_s = self.start_failures.failed(reason, self.clock())
        log.error(
            "pool %s: start failed: %s (%s); next start in %.0f s",
            self.pool.name, reason, detail, pause_s, exc_info=exc,  # the driver's traceback
        )  # fmt: skip
        self.recorder.start_failed(self.pool.name, reason)

    async def _url_of(self, member: Member) -> str | None:
        if member.instance is not None and member.instance.url is not None:
            return member.instance.url
        for instance in await self.driver.list(self.pool.name):
            if instance.replica_id == member.replica_id:
                member.instance = instance
                return instance.url
        return None

    async def _drain(self, member: Member, reason: str) -> None:
        """No new requests; wait for in-flight ones (bounded), then stop and remove."""
        member.busy = True
        member.state = "draining"
        self.recorder.scale_event(self.pool.name, "drain", reason)
        replica = member.replica
        if replica is not None:
            self.pool.drain(replica.id)
            self._publish()
            await self.pool.wait_drained(replica, self.settings.drain_timeout_s)
        held = sum(m.state in TIERS for m in self.members.values())
        tier = None
        if self.tiers is not None and replica is not None and reason not in KEEP_NOTHING:
            tier = self.tiers.first(held)
        if tier is None:
            await self._remove(member, reason)
        else:
            await self._demote(member, tier)

    async def _demote(self, member: Member, tier: Tier) -> None:
        """Hold a drained (or held) replica in ``tier``; one the driver fails to move
        there is removed."""
        member.busy = True
        assert member.instance is not None
        try:
            if tier == "paused":
                await self.driver.pause(member.instance)
            elif tier == "asleep":
                if member.state == "paused":  # a frozen engine takes no call: thaw it
                    member.instance = await self.driver.wake(member.instance)
                await self._engine_call(member.instance, "/sleep")
            else:
                await self.driver.halt(member.instance, STOP_TIMEOUT_S)
        except Exception as exc:
            log.warning(
                "pool %s: cannot hold replica %s %s (%s: %s); removing it",
                self.pool.name, member.replica_id, tier, type(exc).__name__, exc,
            )  # fmt: skip
            await self._remove(member, "failed")
            return
        member.state, member.tier_since, member.replica = tier, self.clock(), None
        member.busy = False
        self._publish()
        self.recorder.scale_event(self.pool.name, "demote", tier)
        log.info("pool %s: replica %s %s", self.pool.name, member.replica_id, tier)

    async def _engine_call(self, instance: Instance, path: str) -> None:
        """vLLM's sleep mode: ``POST /sleep`` or ``/wake_up`` on the replica, which
        answers once done; anything but 2xx (an engine without it) raises."""
        if instance.url is None:
            raise LookupError(f"replica {instance.replica_id} has no address")
        timeout = aiohttp.ClientTimeout(total=self.settings.startup_timeout_s)
        async with self.session.post(instance.url + path, timeout=timeout) as resp:
            resp.raise_for_status()

    def _age_tiers(self, now: float) -> None:
        """Move each held replica down a tier once its time in one is spent; past the
        coldest, or with tiers off, it goes."""
        for member in list(self.members.values()):
            tier = _tier(member)
            if tier is None or member.busy:
                continue
            after = None if self.tiers is None else self.tiers.after(tier, now - member.tier_since)
            if after == tier:
                continue
            if after is None:
                member.busy = True
                self._spawn(self._remove(member, "idle"))
            else:
                member.busy = True
                self._spawn(self._demote(member, after))

    def _wake(self, member: Member, reason: str) -> None:
        """Bring a held replica back: it is starting again from now, expected to take
        its tier's last wake time."""
        tier = _tier(member)
        assert tier is not None
        instance, member.instance = member.instance, None  # a start in flight, as seen
        member.state, member.since = "starting", self.clock()
        member.expected_s = self._wake_expected(tier)
        member.ready_at = None
        self.recorder.scale_event(self.pool.name, "wake", reason)
        self._spawn(self._woken(member, instance, tier))

    async def _woken(self, member: Member, instance: Instance | None, tier: Tier) -> None:
        assert instance is not None
        try:
            if tier == "asleep":
                await self._engine_call(instance, "/wake_up")
                member.instance = instance
            else:
                member.instance = await self.driver.wake(instance)
        except Exception as exc:  # the plan starts another in its place
            log.warning("pool %s: cannot wake replica %s (%s: %s); removing it",
                        self.pool.name, member.replica_id, type(exc).__name__, exc)  # fmt: skip
            member.instance = instance
            await self._remove(member, "failed")
            return
        log.info("pool %s: waking replica %s from %s", self.pool.name, member.replica_id, tier)
        await self._await_ready(member, tier)

    async def _remove(self, member: Member, reason: str) -> None:
        member.busy = True
        if member.instance is not None:
            try:
                await self._stop_instance(member.instance)
            except Exception as exc:  # still there: failed, removed again after a backoff
                if not member.stop_failures:
                    log.warning(
                        "pool %s: cannot remove replica %s yet (%s: %s); retrying",
                        self.pool.name, member.replica_id, type(exc).__name__, exc,
                    )  # fmt: skip
                member.stop_failures += 1
                member.retry_at = self.clock() + backoff(member.stop_failures, cap_s=MAX_BACKOFF_S)
                member.state, member.busy = "failed", False
                if member.replica is not None:
                    self.pool.drain(member.replica.id)
                self._publish()
                return
        self.ledger.release(member.replica_id)
        self.members.pop(member.replica_id, None)
        self._publish()
        if reason == "failed":
            self.recorder.scale_event(self.pool.name, "replace", reason)

    async def _stop_instance(self, instance: Instance) -> None:
        async for attempt in retrying():
            with attempt:
                await self.driver.stop(instance, STOP_TIMEOUT_S)

    def _publish(self) -> None:
        """Hand the pool a whole snapshot: ready and draining replicas."""
        self.pool.set_replicas(
            m.replica for m in self.members.values() if m.replica is not None
            and m.state != "failed"
        )  # fmt: skip

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _tier(member: Member) -> Tier | None:
    """The warm tier ``member`` is held in, if any."""
    return member.state if member.state in TIERS else None
