"""Shared test helpers: polling instead of sleeping, and free loopback ports."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from collections.abc import Callable

import pytest


async def eventually(
    predicate: Callable[[], bool], within: float = 5.0, interval: float = 0.02
) -> None:
    """Wait until ``predicate()`` holds; fail with a clear message after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@functools.cache
def _docker_unavailable() -> str | None:
    """Why no Docker engine can be used, or None when one answers."""
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as exc:
        return f"no Docker engine reachable ({type(exc).__name__}); run ../shared/docker-engine-up"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``docker`` skip without an engine, or fail when REQUIRE_DOCKER=1."""
    if item.get_closest_marker("docker") is None:
        return
    reason = _docker_unavailable()
    if reason is None:
        return
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(reason)
