"""The model server's image (backends/Dockerfile.model) started by the gateway's Docker driver.

What the autoscaler would do with it: start a replica container (on the bridge network, and
on host networking, where the driver hands it HOST and PORT), wait for ``/health``, get
correct predictions, stop it. The image is built from this repository once per session.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.control.drivers import ReplicaSpec
from gateway.control.drivers.docker import DockerDriver

np = pytest.importorskip("numpy", reason="reading the held-out split needs numpy")

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "inference-model:latest"
TEST_SPLIT = REPO_ROOT / "backends" / "model" / "digits_test.npz"


@pytest.fixture(scope="session")
def model_image(client: Any) -> str:
    client.images.build(
        path=str(REPO_ROOT), dockerfile="backends/Dockerfile.model", tag=IMAGE, rm=True,
        forcerm=True,
    )  # fmt: skip
    return IMAGE


@pytest.fixture
async def driver() -> AsyncIterator[DockerDriver]:
    driver = DockerDriver(instance=f"test-{secrets.token_hex(4)}")
    yield driver
    await driver.close()


async def wait_healthy(session: aiohttp.ClientSession, url: str, within: float = 60) -> Any:
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return await r.json()
                last = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url}/health not 200 within {within} s (last: {last!r})")


@pytest.mark.parametrize("network", ["bridge", "host"])
async def test_a_replica_of_the_model_image_serves_correct_predictions(
    driver: DockerDriver, pool: str, model_image: str, network: str
) -> None:
    spec = ReplicaSpec(
        pool=pool, replica_id=f"{pool}-{secrets.token_hex(3)}", image=model_image, network=network
    )
    instance = await driver.start(spec)
    assert instance.url is not None
    data = np.load(TEST_SPLIT)
    images, labels = data["X"][:100], data["y"][:100]
    async with aiohttp.ClientSession() as session:
        health = await wait_healthy(session, instance.url)
        body = orjson.dumps({"inputs": images.astype(float).tolist()})
        async with session.post(f"{instance.url}/predict", data=body) as resp:
            assert resp.status == 200
            predictions = (await resp.json())["predictions"]
        async with session.post(f"{instance.url}/predict", data=b"{oops") as resp:
            assert resp.status == 400
    assert health["provider"] == "CPUExecutionProvider" and health["model"] == "digits-mlp"
    assert (np.asarray(predictions) == labels).mean() >= 0.9
    await driver.stop(instance, timeout_s=10)
    assert await driver.list(pool) == []
