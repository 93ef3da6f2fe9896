"""The simulated model server (backends/sim) over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from backends.sim.server import DISTRIBUTIONS, Settings, Sim, make_app
from tests.conftest import eventually, free_port

MakeSim = Callable[..., Awaitable[tuple[str, Sim]]]


@pytest.fixture
def sim(serve_app) -> MakeSim:  # type: ignore[no-untyped-def]
    """Start a sim replica in-process on an ephemeral port: ``url, sim = await sim(**settings)``."""

    async def make(**settings: Any) -> tuple[str, Sim]:
        replica = Sim("sim-test", Settings(**settings))
        return await serve_app(make_app(replica)), replica

    return make


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def timed_predict(client: aiohttp.ClientSession, url: str) -> tuple[float, int, Any]:
    started = time.monotonic()
    async with client.post(f"{url}/predict", json={"inputs": [1, 2, 3]}) as resp:
        body = await resp.json()
        return time.monotonic() - started, resp.status, body


async def test_predict_answers_json_with_the_replica_name(
    sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    url, _ = await sim(service_ms=5)
    async with client.post(f"{url}/predict", json={"inputs": [1, 2, 3]}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Replica"] == "sim-test"
        body = await resp.json()
    assert body == {"replica": "sim-test", "output": [1, 2, 3], "service_ms": 5.0}


async def test_health_is_503_until_the_startup_delay_has_passed(
    sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    url, replica = await sim(startup_delay_s=0.3)
    statuses: list[int] = []
    deadline = time.monotonic() + 3
    while not statuses or statuses[-1] != 200:
        assert time.monotonic() < deadline, "never became healthy"
        async with client.get(f"{url}/health") as resp:
            statuses.append(resp.status)
        await asyncio.sleep(0.02)
    assert statuses[0] == 503 and set(statuses[:-1]) == {503}
    assert time.monotonic() - replica.started >= 0.3


@pytest.mark.parametrize(("slots", "expected_s"), [(2, 0.2), (4, 0.1)])
async def test_slots_cap_concurrency_and_queue_the_rest(
    sim: MakeSim, client: aiohttp.ClientSession, slots: int, expected_s: float
) -> None:
    url, replica = await sim(service_ms=100, slots=slots)
    started = time.monotonic()
    results = await asyncio.gather(*(timed_predict(client, url) for _ in range(4)))
    total = time.monotonic() - started
    assert [status for _, status, _ in results] == [200] * 4
    assert expected_s * 0.95 <= total < expected_s + 0.12
    assert replica.stats["peak_busy"] == slots
    assert replica.stats["served"] == 4 and replica.stats["in_flight"] == 0


async def test_fail_rate_one_answers_only_500s(sim: MakeSim, client: aiohttp.ClientSession) -> None:
    url, _ = await sim(fail_rate=1.0, service_ms=1000)
    results = await asyncio.gather(*(timed_predict(client, url) for _ in range(5)))
    assert [status for _, status, _ in results] == [500] * 5
    assert max(elapsed for elapsed, _, _ in results) < 0.5  # instant, no service time
    async with client.get(f"{url}/stats") as resp:
        stats = await resp.json()
    assert stats["failures"] == 5 and stats["served"] == 0


async def test_control_changes_slowdown_at_run_time(
    sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    url, _ = await sim(service_ms=50)
    elapsed, _, body = await timed_predict(client, url)
    assert body["service_ms"] == 50 and elapsed < 0.15

    async with client.post(f"{url}/control", json={"slowdown": 4}) as resp:
        assert resp.status == 200
        assert (await resp.json())["slowdown"] == 4
    elapsed, _, body = await timed_predict(client, url)
    assert body["service_ms"] == 200 and elapsed >= 0.19

    async with client.get(f"{url}/control") as resp:
        assert (await resp.json())["slowdown"] == 4


@pytest.mark.parametrize(
    "change",
    [{"slowdown": "fast"}, {"nope": 1}, {"slots": 0}, {"slots": 2.5}, {"hang": 1}, [1]],
)
async def test_control_refuses_bad_changes_whole(
    sim: MakeSim, client: aiohttp.ClientSession, change: Any
) -> None:
    url, replica = await sim()
    before = dataclasses.replace(replica.settings)
    async with client.post(f"{url}/control", json=change) as resp:
        assert resp.status == 400
        assert "error" in await resp.json()
    assert replica.settings == before


async def test_streaming_sends_the_first_event_before_the_last_is_produced(
    sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    url, replica = await sim(tokens=4, token_ms=100)
    started = time.monotonic()
    async with client.post(f"{url}/predict?stream=1") as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await resp.content.readuntil(b"\n\n")
        first_at = time.monotonic() - started
        assert first == b'data: {"token":0}\n\n'
        assert replica.stats["in_flight"] == 1  # the later tokens do not exist yet
        rest = await resp.content.read()
    total = time.monotonic() - started
    assert first_at < 0.25 and total >= 0.39
    events = rest.decode().strip().split("\n\n")
    assert events == ['data: {"token":1}', 'data: {"token":2}', 'data: {"token":3}', "data: [DONE]"]


async def test_streaming_is_also_asked_for_in_the_json_body(
    sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    url, _ = await sim(tokens=2, service_ms=10)
    async with client.post(f"{url}/predict", json={"stream": True}) as resp:
        body = await resp.read()
    assert body == b'data: {"token":0}\n\ndata: {"token":1}\n\ndata: [DONE]\n\n'


async def test_hang_holds_requests_until_it_is_cleared(
    sim: MakeSim, client: aiohttp.ClientSession
) -> None:
    url, replica = await sim(hang=True, service_ms=1)
    pending = asyncio.create_task(timed_predict(client, url))
    await eventually(lambda: replica.stats["in_flight"] == 1)
    done, _ = await asyncio.wait({pending}, timeout=0.3)
    assert not done
    async with client.post(f"{url}/control", json={"hang": False}) as resp:
        assert resp.status == 200
    _, status, _ = await asyncio.wait_for(pending, 2)
    assert status == 200


def samples(distribution: str, n: int = 20000) -> list[float]:
    """``n`` seeded service times in ms, of a mean of 40 (20 ms, slowed down 2x)."""
    replica = Sim("s", Settings(service_ms=20, distribution=distribution, seed=7, slowdown=2))
    return [replica.service_s() * 1000 for _ in range(n)]


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_service_times_have_the_configured_mean(distribution: str) -> None:
    drawn = samples(distribution)
    assert statistics.fmean(drawn) == pytest.approx(40, rel=0.05)
    assert (statistics.pstdev(drawn) == 0) == (distribution == "const")


def test_bimodal_takes_one_of_two_times_ten_apart_one_in_ten_long() -> None:
    drawn = samples("bimodal")
    short = 40 / 1.9
    assert sorted({round(d, 9) for d in drawn}) == pytest.approx([short, 10 * short])
    assert sum(d > short for d in drawn) / len(drawn) == pytest.approx(0.1, abs=0.01)


def test_pareto_starts_at_half_the_mean_with_a_tail_of_exponent_two() -> None:
    drawn = samples("pareto")
    assert min(drawn) >= 20
    for x in (40, 100, 200):  # P(X > x) = (20 / x) ** 2
        share = sum(d > x for d in drawn) / len(drawn)
        assert share == pytest.approx((20 / x) ** 2, rel=0.15)


async def test_cli_serves_independent_replicas_on_several_ports(
    client: aiohttp.ClientSession,
) -> None:
    ports = [free_port(), free_port()]
    command = [sys.executable, "-m", "backends.sim", "--ports", ",".join(map(str, ports))]
    proc = await asyncio.create_subprocess_exec(
        *command, "--service-ms", "1", stderr=asyncio.subprocess.PIPE
    )
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url in urls:
            deadline = time.monotonic() + 10
            while True:
                try:
                    async with client.get(f"{url}/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline and proc.returncode is None, "no start"
                await asyncio.sleep(0.05)
        async with client.post(f"{urls[0]}/control", json={"slowdown": 3}) as resp:
            assert resp.status == 200
        _, _, first = await timed_predict(client, urls[0])
        _, _, second = await timed_predict(client, urls[1])
        assert (first["replica"], first["service_ms"]) == (f"sim-{ports[0]}", 3.0)
        assert (second["replica"], second["service_ms"]) == (f"sim-{ports[1]}", 1.0)
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, stderr.decode()
