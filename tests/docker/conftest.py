"""Shared fixtures for tests against the real Docker engine: the client, the sim image
built from this repository, and a pool name of their own that is cleaned up after."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import docker.errors
import pytest

from gateway.control.drivers import MANAGED_BY, MANAGER, POOL

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "inference-backend:latest"


@pytest.fixture(scope="session")
def client() -> Iterator[Any]:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def image(client: Any) -> str:
    """The sim image, built from the repo once per session (layers cached by the engine)."""
    client.images.build(
        path=str(REPO_ROOT), dockerfile="backends/Dockerfile", tag=IMAGE, rm=True, forcerm=True
    )
    return IMAGE


@pytest.fixture
def pool(client: Any) -> Iterator[str]:
    """A pool name no other run uses; afterwards every container of it is removed."""
    name = f"dtest-{secrets.token_hex(4)}"
    yield name
    labels = [f"{MANAGED_BY}={MANAGER}", f"{POOL}={name}"]
    # Two sweeps: a create still running in a worker thread when the test ended (a
    # cancelled start) can land between them; the second removes what it left.
    for sweep in range(2):
        for row in client.api.containers(all=True, filters={"label": labels}):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(row["Id"], force=True)
        if sweep == 0:
            time.sleep(1.0)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
