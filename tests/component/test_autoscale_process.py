"""The autoscaler end to end with the process driver: real sim replicas, no Docker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from tests.conftest import SIM_PROCESS, eventually, free_port, load_until, scaled_config

ROOT = Path(__file__).resolve().parents[2]


def sim_pool(state_dir: Path, *sim_args: str, **autoscale: Any) -> dict[str, Any]:
    """A gateway whose one pool runs sim replicas as local processes."""
    command = [*SIM_PROCESS["command"], *sim_args]
    config = scaled_config("default", {**SIM_PROCESS, "command": command, **autoscale})
    config["state_dir"] = str(state_dir)
    return config


def records(state_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(p.read_bytes()) for p in sorted((state_dir / "replicas").glob("*.json"))]


async def test_load_scales_the_pool_up_and_back_down(gateway, client, tmp_path: Path) -> None:
    gw = await gateway(sim_pool(tmp_path, "--service-ms", "100", "--slots", "4"))
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] == 1, within=20)
    done = asyncio.Event()
    load = asyncio.create_task(load_until(client, f"{gw.url}/predict", 8, done))
    await eventually(lambda: scaler.count["ready"] >= 3, within=30)
    done.set()
    statuses = await load
    assert set(statuses) == {200}
    await eventually(lambda: len(scaler.members) == 1, within=30)
    assert len(records(tmp_path)) == 1  # the others were stopped and removed


async def test_a_killed_replica_is_replaced_and_costs_no_request(
    gateway, client, tmp_path: Path
) -> None:
    config = sim_pool(tmp_path, "--service-ms", "200", min_replicas=2, max_replicas=2)
    gw = await gateway(config)
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] == 2, within=20)
    before = {r["replica_id"] for r in records(tmp_path)}
    done = asyncio.Event()
    load = asyncio.create_task(load_until(client, f"{gw.url}/predict", 4, done))
    await asyncio.sleep(0.5)
    victim = records(tmp_path)[0]
    os.kill(victim["pid"], signal.SIGKILL)  # in-flight requests on it are cut off
    await eventually(
        lambda: scaler.count["ready"] == 2 and victim["replica_id"] not in scaler.members,
        within=20,
    )
    await asyncio.sleep(0.5)
    done.set()
    statuses = await load
    assert set(statuses) == {200}
    after = {r["replica_id"] for r in records(tmp_path)}
    assert len(after) == 2 and after != before


async def test_scale_down_drains_a_long_request(gateway, client, tmp_path: Path) -> None:
    config = sim_pool(
        tmp_path, "--tokens", "30", "--token-ms", "100", min_replicas=2, max_replicas=2
    )
    gw = await gateway(config)
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] == 2, within=20)

    async def long_stream() -> bytes:
        async with client.post(f"{gw.url}/predict?stream=1") as resp:
            assert resp.status == 200
            return await resp.read()

    streams = [asyncio.create_task(long_stream()) for _ in range(2)]  # one on each replica
    await eventually(lambda: all(r.inflight == 1 for r in gw.pools["default"].replicas.values()))
    scaler.apply(scaler.settings.model_copy(update={"min_replicas": 1}))
    await eventually(lambda: scaler.count["draining"] == 1, within=10)
    bodies = await asyncio.gather(*streams)
    for body in bodies:  # neither stream was cut short by the scale-down
        assert body.count(b"data:") == 31 and body.endswith(b"data: [DONE]\n\n")
    await eventually(lambda: len(records(tmp_path)) == 1, within=10)


async def test_scale_from_zero_answers_the_first_request(gateway, client, tmp_path: Path) -> None:
    config = sim_pool(tmp_path, "--startup-delay-s", "0.5", min_replicas=0)
    gw = await gateway(config)
    await asyncio.sleep(0.5)
    assert records(tmp_path) == []  # nothing runs without demand
    t0 = time.monotonic()
    async with client.post(f"{gw.url}/predict", data=b"{}") as resp:
        assert resp.status == 200
        waited = float(resp.headers["X-Cold-Start-Wait"])
    assert 0.5 <= waited <= time.monotonic() - t0
    assert len(records(tmp_path)) == 1  # one start, shared by whoever waited


async def test_cold_start_overflow_gets_503_with_retry_after(
    gateway, client, tmp_path: Path
) -> None:
    config = sim_pool(
        tmp_path, "--startup-delay-s", "2", min_replicas=0, cold_start={"max_waiting": 2}
    )
    gw = await gateway(config)
    waiting = [asyncio.create_task(client.post(f"{gw.url}/predict")) for _ in range(2)]
    await eventually(lambda: gw.pools["default"].queued == 2)
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) >= 1
    for task in waiting:
        resp = await task
        assert resp.status == 200
        resp.release()


async def test_gpus_are_never_given_out_twice(gateway, client, tmp_path: Path) -> None:
    config = sim_pool(tmp_path, min_replicas=3, max_replicas=3, gpus=[0, 1], gpus_per_replica=1)
    gw = await gateway(config)
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] == 2, within=20)
    await asyncio.sleep(0.5)
    assert scaler.count["ready"] + scaler.count["starting"] == 2  # no GPU for a third
    held = [tuple(r["gpu_ids"]) for r in records(tmp_path)]
    assert sorted(held) == [("0",), ("1",)]
    async with client.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp:
        text = await resp.text()
    assert 'gateway_replica_start_failures_total{pool="default",reason="no_gpu"}' in text
    assert 'gateway_gpus{state="allocated"} 2.0' in text


@pytest.mark.timeout(90)
async def test_a_restarted_gateway_adopts_its_replicas(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = sim_pool(tmp_path, min_replicas=2, max_replicas=2, on_exit="keep")
    config["listen"]["port"], config["admin"]["port"] = port, admin
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))

    async def start_gateway() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(path), cwd=ROOT
        )

    async def answered(session: aiohttp.ClientSession) -> bool:
        try:
            async with session.post(f"http://127.0.0.1:{port}/predict", data=b"{}") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    first = await start_gateway()
    second = None
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                if len(records(tmp_path)) == 2 and await answered(session):
                    break
                await asyncio.sleep(0.1)
            before = records(tmp_path)
            assert len(before) == 2
            first.kill()  # SIGKILL: no chance to clean up
            await first.wait()
            second = await start_gateway()
            for _ in range(200):
                if await answered(session):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(2)  # several ticks: time to start duplicates, if it would
            after = records(tmp_path)
            assert [r["replica_id"] for r in after] == [r["replica_id"] for r in before]
            assert [r["pid"] for r in after] == [r["pid"] for r in before]
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        for record in records(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record["pid"], signal.SIGKILL)
