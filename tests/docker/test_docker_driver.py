"""The Docker driver against a real engine, with the sim image built from this repository.

Every test works in a pool of its own with a random name, and every driver has an instance
id of its own, so parallel runs (and other engineers' containers) never collide; a
finalizer removes whatever carries our labels for that pool, and only that.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import docker
import docker.errors
import pytest

from gateway.control.drivers import (
    GPUS,
    INSTANCE,
    MANAGED_BY,
    MANAGER,
    POOL,
    REPLICA,
    Instance,
    ReplicaSpec,
)
from gateway.control.drivers.docker import DockerDriver, container_name
from tests.conftest import eventually

pytestmark = pytest.mark.docker

READY_WITHIN_S = 30.0


@pytest.fixture
def instance() -> str:
    return f"test-{secrets.token_hex(4)}"


@pytest.fixture
async def driver(instance: str) -> AsyncIterator[DockerDriver]:
    driver = DockerDriver(instance=instance)
    yield driver
    await driver.close()


def _spec(pool: str, image: str, **kwargs: Any) -> ReplicaSpec:
    return ReplicaSpec(
        pool=pool, replica_id=f"{pool}-{secrets.token_hex(3)}", image=image, **kwargs
    )


async def _wait_healthy(url: str, within: float = READY_WITHIN_S) -> None:
    deadline = time.monotonic() + within
    last: object = None
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(
                    f"{url}/health", timeout=aiohttp.ClientTimeout(total=1)
                ) as resp:
                    if resp.status == 200:
                        return
                    last = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url}/health not 200 within {within} s (last: {last!r})")


async def test_start_list_health_stop(driver: DockerDriver, pool: str, image: str) -> None:
    spec = _spec(pool, image, network="bridge", env={"SIM_EXAMPLE": "1"})
    started = await driver.start(spec)

    assert started.state == "running"
    assert started.url is not None and started.url.startswith("http://127.0.0.1:")
    assert (started.replica_id, started.pool, started.gpu_ids) == (spec.replica_id, pool, ())
    assert await driver.list(pool) == [started]  # the URL is known as soon as start returns

    await _wait_healthy(started.url)

    await driver.stop(started, timeout_s=10)
    assert await driver.list(pool) == []
    await driver.stop(started, timeout_s=10)  # idempotent: already gone


async def test_by_default_a_container_is_on_a_bridge_with_its_port_on_loopback_only(
    driver: DockerDriver, pool: str, image: str, client: Any, instance: str
) -> None:
    spec = _spec(pool, image)  # no network asked for
    started = await driver.start(spec)
    attrs = client.api.inspect_container(started.handle)

    assert attrs["HostConfig"]["NetworkMode"] in ("default", "bridge")
    assert list(attrs["NetworkSettings"]["Networks"]) == ["bridge"]
    bindings = attrs["HostConfig"]["PortBindings"]["8000/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    assert "PORT=8000" in attrs["Config"]["Env"]
    labels = attrs["Config"]["Labels"]
    assert labels == {
        MANAGED_BY: MANAGER,
        INSTANCE: instance,
        POOL: pool,
        REPLICA: spec.replica_id,
        GPUS: "",
    }  # the port is not among them: it is read from the engine's port mapping
    assert attrs["Name"] == "/" + container_name(spec.replica_id)
    public = attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"]
    assert started.url == f"http://127.0.0.1:{public}"
    await _wait_healthy(started.url)


@pytest.mark.parametrize(
    "command",
    [(), ("python", "-m", "backends.sim", "--host", "127.0.0.1", "--port", "{port}")],
    ids=["image-cmd", "command-with-port"],
)
async def test_host_network_gets_a_free_loopback_port_through_env_and_command(
    driver: DockerDriver, pool: str, image: str, client: Any, command: tuple[str, ...]
) -> None:
    instance = await driver.start(_spec(pool, image, network="host", command=command))

    assert instance.url is not None and instance.url.startswith("http://127.0.0.1:")
    port = instance.url.rsplit(":", 1)[1]
    attrs = client.api.inspect_container(instance.handle)
    assert attrs["HostConfig"]["NetworkMode"] == "host"
    env = attrs["Config"]["Env"]
    assert f"PORT={port}" in env and "HOST=127.0.0.1" in env
    if command:
        assert attrs["Config"]["Cmd"][-1] == port  # {port} was substituted
    await _wait_healthy(instance.url)
    adopting = DockerDriver(instance=driver.instance)  # a restarted gateway: nothing cached
    try:
        assert [i.url for i in await adopting.list(pool)] == [instance.url]
    finally:
        await adopting.close()


async def test_named_network_is_joined_and_reachable_by_name_in_network_mode(
    pool: str, image: str, client: Any
) -> None:
    network = client.networks.create(f"{pool}-net", labels={MANAGED_BY: MANAGER})
    driver = DockerDriver(instance=pool, reach="network")
    try:
        spec = _spec(pool, image, network=network.name, port=8000)
        instance = await driver.start(spec)
        assert instance.url == f"http://{container_name(spec.replica_id)}:8000"
        attrs = client.api.inspect_container(instance.handle)
        assert network.name in attrs["NetworkSettings"]["Networks"]
        # still published on loopback, so a gateway on the host reaches it as well
        published = (await DockerDriver(client, instance=pool).list(pool))[0].url
        assert published is not None and published.startswith("http://127.0.0.1:")
        await _wait_healthy(published)
        await driver.stop(instance, timeout_s=5)
    finally:
        await driver.close()
        for container in client.containers.list(
            all=True, filters={"label": [f"{MANAGED_BY}={MANAGER}", f"{POOL}={pool}"]}
        ):  # the pool fixture runs later; the network must be empty before removal
            container.remove(force=True)
        network.remove()


async def test_gpu_replica_is_created_with_device_requests_by_id(
    driver: DockerDriver, pool: str, image: str, client: Any
) -> None:
    spec = _spec(pool, image, network="bridge", gpu_ids=("1", "3"))
    instance = await driver.create(spec)

    assert (instance.state, instance.url, instance.gpu_ids) == ("created", None, ("1", "3"))
    attrs = client.api.inspect_container(instance.handle)
    [request] = attrs["HostConfig"]["DeviceRequests"]
    assert request["DeviceIDs"] == ["1", "3"]
    assert request["Capabilities"] == [["gpu"]]
    assert attrs["Config"]["Labels"][GPUS] == "1,3"
    assert await driver.list(pool) == [instance]  # gpu ids come back from the label

    await driver.stop(instance, timeout_s=1)
    assert await driver.list(pool) == []


async def test_a_failed_start_leaves_no_container(
    driver: DockerDriver, pool: str, image: str
) -> None:
    # This engine has no GPU runtime, so starting a GPU container fails (on a GPU host,
    # device 999 does not exist either); the created container must not be left behind.
    with pytest.raises(docker.errors.APIError):
        await driver.start(_spec(pool, image, network="bridge", gpu_ids=("999",)))
    assert await driver.list(pool) == []

    with pytest.raises(docker.errors.ImageNotFound):
        await driver.start(_spec(pool, "igw-no-such-image:never", network="bridge"))
    assert await driver.list(pool) == []


@pytest.mark.parametrize("after_s", [0.0, 0.02, 0.1, 0.3])
async def test_a_cancelled_start_leaves_no_container(
    driver: DockerDriver, pool: str, image: str, after_s: float
) -> None:
    # The reconcile loop's tasks are cancelled on shutdown, at any point of a start.
    start = asyncio.create_task(driver.start(_spec(pool, image, network="bridge")))
    await asyncio.sleep(after_s)
    start.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await start  # may also have finished first: then it is a normal replica
    if start.cancelled():
        deadline = time.monotonic() + 10
        while await driver.list(pool):
            assert time.monotonic() < deadline, "the cancelled start left a container"
            await asyncio.sleep(0.05)


async def test_events_yield_the_pool_of_a_killed_container(
    driver: DockerDriver, pool: str, image: str, client: Any
) -> None:
    seen: list[str] = []

    async def collect() -> None:
        async for name in driver.events():
            seen.append(name)

    collector = asyncio.create_task(collect())
    try:
        instance = await driver.start(_spec(pool, image, network="bridge"))
        await eventually(lambda: pool in seen, within=10)  # its "start"
        seen.clear()

        client.containers.get(instance.handle).kill()

        await eventually(lambda: pool in seen, within=10)  # its "die"
        [after] = await driver.list(pool)
        assert (after.state, after.url) == ("exited", None)
        await driver.stop(after, timeout_s=1)  # removing an exited replica works too
        assert await driver.list(pool) == []
    finally:
        await driver.close()  # ends the stream: the iterator finishes by itself
        await asyncio.wait_for(collector, 5)


async def test_containers_without_our_labels_are_never_listed_or_stopped(
    driver: DockerDriver, pool: str, image: str, client: Any
) -> None:
    # A look-alike: same pool and replica labels, same name scheme, but not managed by us.
    replica_id = f"{pool}-foreign"
    foreign = client.containers.create(
        image,
        name=container_name(replica_id),
        labels={POOL: pool, REPLICA: replica_id, MANAGED_BY: "someone-else"},
    )
    try:
        assert await driver.list(pool) == []
        for handle in (foreign.id, ""):  # by id, and by the name the driver would use
            await driver.stop(Instance(replica_id, pool, "created", None, (), handle), 1)
        foreign.reload()  # still there
        assert foreign.status == "created"
    finally:
        foreign.remove(force=True)


def _look_alike(client: Any, image: str, pool: str, labels: dict[str, str]) -> Any:
    """A running sim container with a published loopback port, created behind the driver's
    back with ``labels`` (and our pool's) on top of the given ones."""
    replica_id = f"{pool}-{secrets.token_hex(3)}"
    container = client.containers.create(
        image,
        name=container_name(replica_id),
        labels={MANAGED_BY: MANAGER, POOL: pool, REPLICA: replica_id, GPUS: "", **labels},
        ports={"8000/tcp": ("127.0.0.1", None)},
    )
    container.start()
    return container


async def test_a_look_alike_of_another_instance_is_never_listed_or_stopped(
    driver: DockerDriver, pool: str, image: str, client: Any
) -> None:
    # Every one of our labels, but another gateway's instance id, or none at all.
    others = [
        _look_alike(client, image, pool, {INSTANCE: "another-gateway"}),
        _look_alike(client, image, pool, {}),
    ]
    mine = await driver.start(_spec(pool, image))
    assert await driver.list(pool) == [mine]
    for other in others:
        replica_id = other.labels[REPLICA]
        for handle in (other.id, ""):  # by id, and by the name the driver would use
            await driver.stop(Instance(replica_id, pool, "running", None, (), handle), 1)
        other.reload()
        assert other.status == "running"


async def test_pause_halt_and_wake_a_replica_of_ours_only(
    driver: DockerDriver, pool: str, image: str, client: Any
) -> None:
    """The warm tiers' calls: paused, woken (the same address), halted and kept, woken
    again (a new address maybe: the engine picks the published port at each start);
    stopping a paused container removes it. A look-alike is never touched."""
    other = _look_alike(client, image, pool, {INSTANCE: "another-gateway"})
    mine = await driver.start(_spec(pool, image))
    assert mine.url is not None
    await _wait_healthy(mine.url)
    await driver.pause(mine)
    [listed] = await driver.list(pool)
    assert listed.state == "paused" and listed.url is None
    woken = await driver.wake(listed)
    assert woken.state == "running" and woken.url == mine.url
    await _wait_healthy(woken.url)
    await driver.halt(woken, timeout_s=5)
    [listed] = await driver.list(pool)
    assert listed.state == "exited" and listed.handle == mine.handle  # kept
    woken = await driver.wake(listed)
    assert woken.state == "running" and woken.url is not None
    await _wait_healthy(woken.url)
    await driver.pause(woken)
    await driver.stop(woken, timeout_s=5)  # thawed, stopped, removed
    assert await driver.list(pool) == []
    fake = Instance(other.labels[REPLICA], pool, "running", None, (), other.id)
    await driver.pause(fake)
    await driver.halt(fake, 1)
    with pytest.raises(LookupError):
        await driver.wake(fake)
    other.reload()
    assert other.status == "running"


async def test_two_instances_on_one_engine_see_only_their_own_replicas(
    driver: DockerDriver, pool: str, image: str
) -> None:
    other = DockerDriver(instance=f"{driver.instance}-other")
    try:
        mine = await driver.start(_spec(pool, image))
        theirs = await other.start(_spec(pool, image))
        assert await driver.list(pool) == [mine]
        assert await other.list(pool) == [theirs]
        await driver.stop(theirs, timeout_s=1)  # refused: not ours
        assert await other.list(pool) == [theirs]
        await other.stop(theirs, timeout_s=1)
        assert await other.list(pool) == [] and await driver.list(pool) == [mine]
    finally:
        await other.close()


async def test_the_url_comes_from_the_engines_port_mapping_not_from_a_label(
    driver: DockerDriver, pool: str, image: str, client: Any, instance: str
) -> None:
    # A container of ours whose labels claim another port: the engine's mapping wins.
    container = _look_alike(
        client, image, pool, {INSTANCE: instance, "io.inference-gateway.port": "1"}
    )
    attrs = client.api.inspect_container(container.id)
    public = attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"]
    [listed] = await driver.list(pool)
    assert listed.url == f"http://127.0.0.1:{public}"
    await _wait_healthy(listed.url)
