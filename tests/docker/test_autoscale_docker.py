"""The autoscaler end to end against the real engine: containers of the sim image."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.drivers import MANAGED_BY, MANAGER, POOL, Instance, ReplicaSpec
from gateway.drivers.docker import DockerDriver
from tests.conftest import eventually, free_port, load_until, scaled_config
from tests.docker.conftest import REPO_ROOT

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


def docker_config(pool: str, image: str, *sim_args: str, **autoscale: Any) -> dict[str, Any]:
    """One pool of sim containers on the default bridge, reached on published ports."""
    command = f"exec python -m backends.sim --host 0.0.0.0 --port $PORT {' '.join(sim_args)}"
    return scaled_config(
        pool,
        {
            "driver": "docker",
            "image": image,
            "command": ["sh", "-c", command] if sim_args else [],
            "network": "bridge",
            **autoscale,
        },
    )


def containers(client: Any, pool: str, all: bool = False) -> list[dict[str, Any]]:
    """The pool's containers as one listing call returns them (no per-container inspect,
    which races with removals)."""
    labels = [f"{MANAGED_BY}={MANAGER}", f"{POOL}={pool}"]
    rows: list[dict[str, Any]] = client.api.containers(all=all, filters={"label": labels})
    return rows


async def test_load_scales_containers_up_and_back_to_one(
    pool, gateway, client, http, image
) -> None:
    gw = await gateway(docker_config(pool, image, "--service-ms", "100", "--slots", "4"))
    scaler = gw.autoscalers[pool]
    await eventually(lambda: scaler.count["ready"] == 1, within=30)
    done = asyncio.Event()
    load = asyncio.create_task(load_until(http, f"{gw.url}/predict", 8, done))
    await eventually(lambda: scaler.count["ready"] >= 3, within=40)
    assert len(containers(client, pool)) >= 3
    done.set()
    assert set(await load) == {200}
    await eventually(lambda: len(containers(client, pool, all=True)) == 1, within=40)


async def test_docker_kill_is_replaced_with_no_client_error(
    pool, gateway, client, http, image
) -> None:
    config = docker_config(pool, image, "--service-ms", "200", min_replicas=2, max_replicas=2)
    gw = await gateway(config)
    scaler = gw.autoscalers[pool]
    await eventually(lambda: scaler.count["ready"] == 2, within=30)
    done = asyncio.Event()
    load = asyncio.create_task(load_until(http, f"{gw.url}/predict", 4, done))
    await asyncio.sleep(0.5)
    victim = containers(client, pool)[0]["Id"]
    client.api.kill(victim)  # what `docker kill` does: SIGKILL, in-flight requests cut off
    await eventually(
        lambda: (
            scaler.count["ready"] == 2
            and all(c["Id"] != victim for c in containers(client, pool, all=True))
        ),
        within=30,
    )
    done.set()
    statuses = await load
    assert len(statuses) > 10 and set(statuses) == {200}


async def test_scale_down_drains_a_long_request(pool, gateway, client, image) -> None:
    config = docker_config(
        pool, image, "--tokens", "30", "--token-ms", "100", min_replicas=2, max_replicas=2
    )
    gw = await gateway(config)
    scaler = gw.autoscalers[pool]
    await eventually(lambda: scaler.count["ready"] == 2, within=30)

    async def long_stream(session: aiohttp.ClientSession) -> bytes:
        async with session.post(f"{gw.url}/predict?stream=1") as resp:
            assert resp.status == 200
            return await resp.read()

    async with aiohttp.ClientSession() as session:
        streams = [asyncio.create_task(long_stream(session)) for _ in range(2)]
        replicas = gw.pools[pool].replicas.values()
        await eventually(lambda: all(r.inflight == 1 for r in replicas))
        scaler.apply(scaler.settings.model_copy(update={"min_replicas": 1}))
        await eventually(lambda: scaler.count["draining"] == 1, within=10)
        for body in await asyncio.gather(*streams):
            assert body.count(b"data:") == 31 and body.endswith(b"data: [DONE]\n\n")
    await eventually(lambda: len(containers(client, pool, all=True)) == 1, within=30)


async def test_scale_from_zero_answers_the_first_request(pool, gateway, client, image) -> None:
    gw = await gateway(docker_config(pool, image, min_replicas=0))
    await asyncio.sleep(0.5)
    assert containers(client, pool, all=True) == []
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gw.url}/predict", data=b"{}") as resp,
    ):
        assert resp.status == 200
        assert float(resp.headers["X-Cold-Start-Wait"]) > 0
    assert len(containers(client, pool, all=True)) == 1


class CreateOnly(DockerDriver):
    """This engine has no GPU runtime: GPU containers are created and never started."""

    async def start(self, spec: ReplicaSpec) -> Instance:
        return await super().start(replace(spec, start=False))


async def test_a_gpu_pool_assigns_each_id_once(pool, gateway, client, image) -> None:
    config = docker_config(
        pool, image, min_replicas=3, max_replicas=3, gpus=[0, 1], gpus_per_replica=1
    )
    await gateway(config, drivers={"docker/published": CreateOnly()})
    await eventually(lambda: len(containers(client, pool, all=True)) == 2, within=20)
    await asyncio.sleep(1)  # ticks go by: no third container, for want of a GPU
    created = containers(client, pool, all=True)
    assert len(created) == 2
    assigned = []
    for row in created:
        container = client.api.inspect_container(row["Id"])
        requests = container["HostConfig"]["DeviceRequests"]
        assert len(requests) == 1 and requests[0]["Capabilities"] == [["gpu"]]
        assigned.append(tuple(requests[0]["DeviceIDs"]))
        assert container["State"]["Status"] == "created"
    assert sorted(assigned) == [("0",), ("1",)]


async def test_a_killed_gateway_is_replaced_by_one_that_adopts(
    client, image, pool, tmp_path: Path
) -> None:
    port = free_port()
    config = docker_config(pool, image, min_replicas=2, max_replicas=2, on_exit="keep")
    config["listen"]["port"], config["admin"]["port"] = port, free_port()
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))

    async def answered(session: aiohttp.ClientSession) -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.post(f"http://127.0.0.1:{port}/predict", data=b"{}") as resp:
                return resp.status == 200
        return False

    async def run_gateway() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(path), cwd=REPO_ROOT
        )

    first = await run_gateway()
    second = None
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                if len(containers(client, pool)) == 2 and await answered(session):
                    break
                await asyncio.sleep(0.1)
            before = sorted(c["Id"] for c in containers(client, pool, all=True))
            assert len(before) == 2
            first.kill()
            await first.wait()
            second = await run_gateway()
            for _ in range(300):
                if await answered(session):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(2)  # ticks go by: a duplicate would show now
            assert sorted(c["Id"] for c in containers(client, pool, all=True)) == before
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
