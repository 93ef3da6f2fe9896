"""The autoscaler end to end against the real engine: containers of the sim image."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.control.drivers import (
    INSTANCE,
    MANAGED_BY,
    MANAGER,
    POOL,
    REPLICA,
    Instance,
    ReplicaSpec,
)
from gateway.control.drivers.docker import DockerDriver
from tests.conftest import eventually, free_port, load_until, scale_out_and_in, scaled_config
from tests.docker.conftest import REPO_ROOT

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


def docker_config(pool: str, image: str, *sim_args: str, **autoscale: Any) -> dict[str, Any]:
    """One pool of sim containers on the default network (the bridge), reached on their
    published ports; the gateway's instance id (``cluster``) is the pool's unique name."""
    command = f"exec python -m backends.sim --host 0.0.0.0 --port $PORT {' '.join(sim_args)}"
    config = scaled_config(
        pool,
        {
            "driver": "docker",
            "image": image,
            "command": ["sh", "-c", command] if sim_args else [],
            **autoscale,
        },
    )
    return {**config, "cluster": pool}


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
        return await self.create(spec)


async def test_a_gpu_pool_assigns_each_id_once(pool, gateway, client, image) -> None:
    config = docker_config(
        pool, image, min_replicas=3, max_replicas=3, gpus=[0, 1], gpus_per_replica=1
    )
    await gateway(config, drivers={"docker/published": CreateOnly(instance=pool)})
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
    del config["cluster"]  # the instance id is a random one, kept in state_dir
    config["state_dir"] = str(tmp_path / "state")
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

            async def both_serving() -> bool:
                return len(containers(client, pool)) == 2 and await answered(session)

            await eventually(both_serving, 30, 0.1, what="two replicas serving")
            before = sorted(c["Id"] for c in containers(client, pool, all=True))
            assert len(before) == 2
            first.kill()
            await first.wait()
            second = await run_gateway()
            await eventually(lambda: answered(session), 30, 0.1, what="the restarted gateway")
            await asyncio.sleep(2)  # ticks go by: a duplicate would show now
            assert sorted(c["Id"] for c in containers(client, pool, all=True)) == before
            instance = (tmp_path / "state" / "instance-id").read_text().strip()
            assert {c["Labels"][INSTANCE] for c in containers(client, pool)} == {instance}
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_replicas_are_on_a_bridge_with_ports_published_on_loopback_by_default(
    pool, gateway, client, http, image
) -> None:
    gw = await gateway(docker_config(pool, image))  # no autoscale.network in the config
    await eventually(lambda: gw.autoscalers[pool].count["ready"] == 1, within=30)
    [row] = containers(client, pool)
    attrs = client.api.inspect_container(row["Id"])
    assert attrs["HostConfig"]["NetworkMode"] in ("default", "bridge")
    bindings = attrs["HostConfig"]["PortBindings"]["8000/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    public = attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"]
    assert [r.url for r in gw.pools[pool].replicas.values()] == [f"http://127.0.0.1:{public}"]
    async with http.post(f"{gw.url}/predict", data=b"{}") as resp:
        assert resp.status == 200


@pytest.mark.timeout(90)
async def test_two_gateways_with_one_pool_name_leave_each_others_replicas_alone(
    pool, gateway, client, http, image
) -> None:
    gw_a = await gateway({**docker_config(pool, image, max_replicas=1), "cluster": f"{pool}-a"})
    await eventually(lambda: gw_a.autoscalers[pool].count["ready"] == 1, within=30)
    [theirs] = containers(client, pool)
    gw_b = Gateway(
        parse_config({**docker_config(pool, image, max_replicas=1), "cluster": f"{pool}-b"})
    )
    await gw_b.start()
    try:  # b adopts nothing and removes nothing: it starts a replica of its own
        scaler_b = gw_b.autoscalers[pool]
        await eventually(lambda: scaler_b.count["ready"] == 1, within=30)
        await asyncio.sleep(1)  # ticks go by
        [mine] = scaler_b.members
        assert mine != theirs["Labels"][REPLICA]
        assert list(gw_b.pools[pool].replicas) == [mine]  # b routes to its own only
        async with http.post(f"http://127.0.0.1:{gw_b.port}/predict", data=b"{}") as resp:
            assert resp.status == 200
        owners = {(c["Labels"][INSTANCE], c["Labels"][REPLICA]) for c in containers(client, pool)}
        assert owners == {(f"{pool}-a", theirs["Labels"][REPLICA]), (f"{pool}-b", mine)}
    finally:
        await gw_b.stop()  # on_exit: stop removes b's replica, and only that one
    assert [c["Id"] for c in containers(client, pool, all=True)] == [theirs["Id"]]
    assert gw_a.autoscalers[pool].count["ready"] == 1


def states(client: Any, pool: str) -> dict[str, str]:
    """Container id -> its state (running, paused, exited ...), all of the pool's."""
    return {c["Id"]: c["State"] for c in containers(client, pool, all=True)}


async def test_a_replica_scaled_down_is_paused_then_stopped_then_woken_under_load(
    pool, gateway, client, http, image
) -> None:
    """The warm tiers against the real engine: the container scaled down is paused
    (``docker pause``), then stopped and kept, then started again for the next load,
    with no client error; past its time in the coldest tier it is removed."""
    config = docker_config(
        pool, image, "--service-ms", "100", "--slots", "2", max_replicas=2,
        tiers={"paused_s": 3, "stopped_s": 60, "max_warm": 1},
    )  # fmt: skip
    gw = await gateway(config)
    scaler = gw.autoscalers[pool]
    await scale_out_and_in(gw, http, pool, 40)
    await eventually(lambda: "paused" in states(client, pool).values(), within=30)
    held = next(cid for cid, state in states(client, pool).items() if state == "paused")
    await eventually(lambda: states(client, pool).get(held) == "exited", within=20)
    await eventually(lambda: scaler.count["stopped"] == 1, within=10)  # once the stop returns
    assert len(states(client, pool)) == 2  # kept
    done = asyncio.Event()
    load = asyncio.create_task(load_until(http, f"{gw.url}/predict", 6, done))
    await eventually(lambda: scaler.count["ready"] == 2, within=40, what="the held one woken")
    assert states(client, pool).get(held) == "running"  # the same container, started again
    done.set()
    assert set(await load) == {200}
    assert len(states(client, pool)) == 2  # none created in its place
    async with http.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp:
        text = await resp.text()
    assert f'gateway_replica_wake_seconds_count{{pool="{pool}",tier="stopped"}} 1.0' in text
    scaler.apply(scaler.settings.model_copy(update={"tiers": None}))  # tiers off: it goes
    await eventually(lambda: len(states(client, pool)) == 1, within=40)


async def test_a_paused_replica_wakes_in_milliseconds(pool, gateway, client, http, image) -> None:
    config = docker_config(
        pool, image, "--service-ms", "100", "--slots", "2", max_replicas=2,
        tiers={"paused_s": 120, "max_warm": 1},
    )  # fmt: skip
    gw = await gateway(config)
    scaler = gw.autoscalers[pool]
    await scale_out_and_in(gw, http, pool, 40)
    await eventually(lambda: scaler.count["paused"] == 1, within=30)
    held = next(cid for cid, state in states(client, pool).items() if state == "paused")
    done = asyncio.Event()
    load = asyncio.create_task(load_until(http, f"{gw.url}/predict", 6, done))
    await eventually(lambda: states(client, pool).get(held) == "running", within=20)
    await eventually(lambda: scaler.count["ready"] == 2, within=20)
    done.set()
    assert set(await load) == {200}
    assert scaler.wake_s["paused"] < 1.0  # thawed, not started: no model load
    await eventually(lambda: scaler.count["paused"] == 1, within=30)  # held again
    scaler.apply(scaler.settings.model_copy(update={"tiers": None}))  # a paused container
    await eventually(lambda: len(states(client, pool)) == 1, within=30)  # is removed too
