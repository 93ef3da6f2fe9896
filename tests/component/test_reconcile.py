"""The reconcile loop against a recording fake driver (replicas are real HTTP servers)."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest

from gateway import config
from gateway.control.autoscaler import PoolAutoscaler
from gateway.control.drivers import Instance, ReplicaSpec
from gateway.control.gpus import GpuLedger
from gateway.dataplane.policies import make_policy
from gateway.dataplane.pool import Pool
from tests.component.conftest import ok_handler
from tests.conftest import eventually


class RecordingDriver:
    """Keeps instances in memory and records every call; all replicas share one URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.instances: dict[str, Instance] = {}
        self.calls: list[tuple[str, str]] = []

    async def list(self, pool: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.pool == pool]

    async def start(self, spec: ReplicaSpec) -> Instance:
        self.calls.append(("start", spec.replica_id))
        instance = Instance(spec.replica_id, spec.pool, "running", self.url, spec.gpu_ids)
        self.instances[spec.replica_id] = instance
        return instance

    async def stop(self, instance: Instance, timeout_s: float) -> None:
        self.calls.append(("stop", instance.replica_id))
        self.instances.pop(instance.replica_id, None)

    async def events(self) -> AsyncIterator[str]:
        if False:
            yield ""

    async def close(self) -> None:
        pass

    def exit(self, replica_id: str) -> None:
        self.instances[replica_id] = replace(self.instances[replica_id], state="exited")


@pytest.fixture
async def loop_parts(backend):
    server = await backend(ok_handler)
    driver = RecordingDriver(server.url)
    settings = config.Pool.model_validate(
        {"autoscale": {"min_replicas": 2, "max_replicas": 4, "tick_s": 3600}}
    )
    assert settings.autoscale is not None
    pool = Pool(
        "p",
        settings,
        make_policy("round_robin", clock=time.monotonic, rng=random.Random(1)),
        time.monotonic,
    )
    async with aiohttp.ClientSession() as session:
        scaler = PoolAutoscaler(
            pool, settings.autoscale, driver, GpuLedger([]), session, time.monotonic
        )
        yield scaler, driver, pool
        await scaler.shutdown(stop_replicas=False)


def ready(scaler: PoolAutoscaler) -> int:
    return scaler.count["ready"]


async def test_converged_means_no_action(loop_parts) -> None:
    scaler, driver, pool = loop_parts
    await scaler.tick()
    assert [c[0] for c in driver.calls] == ["start", "start"]
    await eventually(lambda: ready(scaler) == 2 and len(pool.replicas) == 2)
    driver.calls.clear()
    for _ in range(5):
        await scaler.tick()
    assert driver.calls == []


async def test_a_dead_replica_is_replaced(loop_parts) -> None:
    scaler, driver, pool = loop_parts
    await scaler.tick()
    await eventually(lambda: ready(scaler) == 2)
    dead = next(iter(driver.instances))
    driver.calls.clear()
    driver.exit(dead)
    await scaler.tick()
    await eventually(lambda: ("stop", dead) in driver.calls)
    assert dead not in pool.replicas
    await scaler.tick()
    await eventually(lambda: ready(scaler) == 2)
    starts = [c for c in driver.calls if c[0] == "start"]
    assert len(starts) == 1 and len(pool.replicas) == 2


async def test_adoption_takes_over_running_replicas_without_duplicates(loop_parts) -> None:
    scaler, driver, pool = loop_parts
    for rid in ("p-old1", "p-old2"):
        driver.instances[rid] = Instance(rid, "p", "running", driver.url)
    driver.instances["p-dead"] = Instance("p-dead", "p", "exited", driver.url)
    await scaler._adopt()
    await eventually(lambda: ready(scaler) == 2)
    await scaler.tick()
    assert driver.calls == [("stop", "p-dead")]  # no new start: the adopted two suffice
    assert set(pool.replicas) == {"p-old1", "p-old2"}
