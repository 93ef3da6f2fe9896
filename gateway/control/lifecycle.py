"""One pool's replicas through their lives, as the reconcile loop decides.

``autoscaler.py`` observes and decides; this carries a decision out, one replica at a
time: started (with the GPUs it gets from the ledger), health-checked into the pool,
drained, held in a warm tier (``tiers.py``) and woken, removed. Each step that fails is
counted and retried by the loop's next tick, never here in a loop of its own: a failed
start pauses the next (``StartFailures``), a failed removal is tried again after a
backoff, a replica that cannot be held or woken is removed.

A replica's life: ``starting`` (created; its health path is polled) -> ``ready`` (in the
pool, taking requests) -> ``draining`` (no new requests; waits for in-flight ones up to
``drain_timeout_s``) -> held (paused, asleep, stopped) or stopped and removed. ``failed``
replicas are removed and replaced.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from gateway import config
from gateway.control.backoff import backoff, retrying
from gateway.control.drivers import Driver, Instance, ReplicaSpec
from gateway.control.failures import StartFailures
from gateway.control.gpus import GpuLedger
from gateway.control.members import Member
from gateway.control.readiness import await_ready
from gateway.control.startup import StartupTimes
from gateway.control.tiers import ORDER as TIERS
from gateway.control.tiers import Tier, TierRules
from gateway.dataplane.pool import Pool
from gateway.dataplane.replica import Replica
from gateway.recorder import Recorder

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0  # SIGTERM grace for a replica that has already drained
PAUSED_WAKE_S = 0.5  # a paused replica's expected wake, until one is measured
KEEP_NOTHING = frozenset({"admin", "shutdown"})  # drains that hold nothing in a tier
MAX_BACKOFF_S = 60.0  # the cap of the pause between failed starts, and between failed stops


class Lifecycle:
    """The replicas of one pool (``members``) and what is done to them. ``ready`` is
    set whenever a replica became ready: the loop may have waiting requests to plan for."""

    def __init__(
        self,
        pool: Pool,
        driver: Driver,
        ledger: GpuLedger,
        session: aiohttp.ClientSession,
        clock: Callable[[], float],
        recorder: Recorder,
        startup: StartupTimes,
        ready: asyncio.Event,
    ) -> None:
        self.pool, self.driver, self.ledger, self.session = pool, driver, ledger, session
        self.clock, self.recorder, self.startup, self.ready = clock, recorder, startup, ready
        self.members: dict[str, Member] = {}
        self.start_failures = StartFailures(MAX_BACKOFF_S)  # reset once one stays up
        self.wake_s: dict[Tier, float] = {"paused": PAUSED_WAKE_S}  # the last wake, per tier
        self.tiers: TierRules | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def apply(self, settings: config.Autoscale) -> None:
        self.settings = settings
        tiers = settings.tiers
        self.tiers = None if tiers is None else TierRules(
            tiers.paused_s, tiers.asleep_s, tiers.stopped_s, tiers.max_warm,
            self.driver.tiers | {"asleep"},  # asleep: the engine's, as the config says
        )  # fmt: skip

    async def cancel(self) -> None:
        """End every task in flight (a start's readiness poll, a drain)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def fail(self, member: Member, why: str) -> None:
        """Out of the pool at once, to be removed and replaced: it exited, went
        unhealthy or never became healthy."""
        log.warning("pool %s: replica %s %s; replacing it", self.pool.name, member.replica_id, why)
        member.state = "failed"
        if member.replica is not None:
            self.pool.drain(member.replica.id)
        self.publish()

    async def start(self, reason: str) -> None:
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
            self.start_failed("driver", f"{type(exc).__name__}: {exc}", exc)
            return
        log.info("pool %s: starting replica %s (%s)", self.pool.name, rid, reason)
        self.recorder.scale_event(self.pool.name, "start", reason)
        self.spawn(self.await_ready(member))

    async def await_ready(self, member: Member, woken: Tier | None = None) -> None:
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
            self.start_failed("startup_timeout", member.replica_id)
            self.fail(member, "did not become healthy in time")
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
        self.publish()
        how = "ready" if woken is None else f"awake from {woken}"
        log.info("pool %s: replica %s %s after %.3f s", self.pool.name, url, how, startup_s)
        self.ready.set()  # requests may be waiting, and the plan may change
        if woken is None:  # kept for the next gateway: a file write, off the loop
            await asyncio.to_thread(self.startup.keep, self.startup.samples)

    def start_failed(self, reason: str, detail: str, exc: BaseException | None = None) -> None:
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

    async def drain(self, member: Member, reason: str) -> None:
        """No new requests; wait for in-flight ones (bounded), then hold it in a warm tier
        (a scale-down's, where tiers are on) or stop and remove it."""
        member.busy = True
        member.state = "draining"
        self.recorder.scale_event(self.pool.name, "drain", reason)
        replica = member.replica
        if replica is not None:
            self.pool.drain(replica.id)
            self.publish()
            await self.pool.wait_drained(replica, self.settings.drain_timeout_s)
        held = sum(m.state in TIERS for m in self.members.values())
        tier = None
        if self.tiers is not None and replica is not None and reason not in KEEP_NOTHING:
            tier = self.tiers.first(held)
        if tier is None:
            await self.remove(member, reason)
        else:
            await self.demote(member, tier)

    async def demote(self, member: Member, tier: Tier) -> None:
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
                await self.engine_call(member.instance, "/sleep")
            else:
                await self.driver.halt(member.instance, STOP_TIMEOUT_S)
        except Exception as exc:
            log.warning(
                "pool %s: cannot hold replica %s %s (%s: %s); removing it",
                self.pool.name, member.replica_id, tier, type(exc).__name__, exc,
            )  # fmt: skip
            await self.remove(member, "failed")
            return
        member.state, member.tier_since, member.replica = tier, self.clock(), None
        member.busy = False
        self.publish()
        self.recorder.scale_event(self.pool.name, "demote", tier)
        log.info("pool %s: replica %s %s", self.pool.name, member.replica_id, tier)

    async def engine_call(self, instance: Instance, path: str) -> None:
        """vLLM's sleep mode: ``POST /sleep`` or ``/wake_up`` on the replica, which
        answers once done; anything but 2xx (an engine without it) raises."""
        if instance.url is None:
            raise LookupError(f"replica {instance.replica_id} has no address")
        timeout = aiohttp.ClientTimeout(total=self.settings.startup_timeout_s)
        async with self.session.post(instance.url + path, timeout=timeout) as resp:
            resp.raise_for_status()

    def age_tiers(self, now: float) -> None:
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
                self.spawn(self.remove(member, "idle"))
            else:
                member.busy = True
                self.spawn(self.demote(member, after))

    def wake(self, member: Member, reason: str) -> None:
        """Bring a held replica back: it is starting again from now, expected to take
        its tier's last wake time."""
        tier = _tier(member)
        assert tier is not None
        instance, member.instance = member.instance, None  # a start in flight, as seen
        member.state, member.since = "starting", self.clock()
        member.expected_s = self._wake_expected(tier)
        member.ready_at = None
        self.recorder.scale_event(self.pool.name, "wake", reason)
        self.spawn(self._woken(member, instance, tier))

    async def _woken(self, member: Member, instance: Instance | None, tier: Tier) -> None:
        assert instance is not None
        try:
            if tier == "asleep":
                await self.engine_call(instance, "/wake_up")
                member.instance = instance
            else:
                member.instance = await self.driver.wake(instance)
        except Exception as exc:  # the plan starts another in its place
            log.warning("pool %s: cannot wake replica %s (%s: %s); removing it",
                        self.pool.name, member.replica_id, type(exc).__name__, exc)  # fmt: skip
            member.instance = instance
            await self.remove(member, "failed")
            return
        log.info("pool %s: waking replica %s from %s", self.pool.name, member.replica_id, tier)
        await self.await_ready(member, tier)

    async def remove(self, member: Member, reason: str) -> None:
        member.busy = True
        if member.instance is not None:
            try:
                await self.stop_instance(member.instance)
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
                self.publish()
                return
        self.ledger.release(member.replica_id)
        self.members.pop(member.replica_id, None)
        self.publish()
        if reason == "failed":
            self.recorder.scale_event(self.pool.name, "replace", reason)

    async def stop_instance(self, instance: Instance) -> None:
        async for attempt in retrying():
            with attempt:
                await self.driver.stop(instance, STOP_TIMEOUT_S)

    def publish(self) -> None:
        """Hand the pool a whole snapshot: ready and draining replicas."""
        self.pool.set_replicas(
            m.replica for m in self.members.values() if m.replica is not None
            and m.state != "failed"
        )  # fmt: skip

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def revive_s(self) -> float:
        """How soon a replica asked for now would be ready: the wake of the warmest one
        held, or a whole start-up."""
        held = [tier for m in self.members.values() if (tier := _tier(m)) is not None]
        return self._wake_expected(min(held, key=TIERS.index)) if held else self.startup.expected_s

    def _wake_expected(self, tier: Tier) -> float:
        return self.wake_s.get(tier, self.startup.expected_s)


def _tier(member: Member) -> Tier | None:
    """The warm tier ``member`` is held in, if any."""
    return member.state if member.state in TIERS else None
