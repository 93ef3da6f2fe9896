"""Live reload: a good config applies under load without losing a request; a bad one
changes nothing and names every bad key."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import yaml

from gateway.config import ConfigError, parse_config
from tests.component.conftest import ok_handler, pool_config
from tests.conftest import SIM_PROCESS, eventually, free_port, load_until, scaled_config

ROOT = Path(__file__).resolve().parents[2]


async def test_a_good_reload_under_load_loses_nothing(backend, gateway, client) -> None:
    a, b, c = [await backend(ok_handler) for _ in range(3)]
    config = pool_config([a.url, b.url])
    gw = await gateway(config)
    done = asyncio.Event()
    load = asyncio.create_task(load_until(client, f"{gw.url}/predict", 4, done))
    await eventually(lambda: a.hits > 20)

    config["pools"]["default"].update(
        policy="peak_ewma", backends=[b.url, c.url], max_inflight_per_replica=2
    )
    config["pools"]["extra"] = {"backends": [a.url]}
    config["routes"].insert(0, {"path": "/extra", "pool": "extra"})
    config["max_body_bytes"] = 100
    await gw.reload(parse_config(config))
    a_hits = a.hits
    await eventually(lambda: c.hits > 20)
    done.set()
    statuses = await load
    assert set(statuses) == {200}
    pool = gw.pools["default"]
    assert pool.settings.policy == "peak_ewma" and pool.max_inflight == 2
    assert set(pool.replicas) == {b.url[7:], c.url[7:]}
    assert a.hits - a_hits <= 4  # only requests already in flight on it finished there
    async with client.post(f"{gw.url}/extra/x") as resp:
        assert resp.status == 200
    async with client.post(f"{gw.url}/predict", data=b"x" * 101) as resp:
        assert resp.status == 413


async def test_removing_a_pool(backend, gateway, client) -> None:
    a, b = await backend(ok_handler), await backend(ok_handler)
    config = pool_config([a.url])
    config["pools"]["other"] = {"backends": [b.url]}
    config["routes"].insert(0, {"path": "/other", "pool": "other"})
    gw = await gateway(config)
    async with client.post(f"{gw.url}/other") as resp:
        assert resp.status == 200 and b.hits == 1
    del config["pools"]["other"]
    config["routes"].pop(0)
    await gw.reload(parse_config(config))
    assert "other" not in gw.pools
    async with client.post(f"{gw.url}/other") as resp:
        assert resp.status == 200 and a.hits == 1  # now the catch-all route's pool


async def test_moving_the_listener(backend, gateway, client) -> None:
    b = await backend(ok_handler)
    config = pool_config([b.url])
    gw = await gateway(config)
    old_port, new_port = gw.port, free_port()
    config["listen"]["port"] = new_port
    await gw.reload(parse_config(config))
    async with client.post(f"http://127.0.0.1:{new_port}/predict") as resp:
        assert resp.status == 200

    async def old_closed() -> bool:
        try:
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(f"http://127.0.0.1:{old_port}/healthz")
        except aiohttp.ClientConnectionError:
            return True
        return False

    await eventually(old_closed, 5, 0.1, what="the old listener closed")


async def test_a_bad_reload_keeps_the_running_config(backend, gateway, client, tmp_path) -> None:
    b = await backend(ok_handler)
    config = pool_config([b.url])
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    gw = await gateway(config, config_path=path)
    running = gw.config
    bad = pool_config([b.url], policy="fastest", health={"interval_s": -1})
    bad["pools"]["default"]["queue"] = {"max_size": -5, "bogus": 1}
    path.write_text(yaml.safe_dump(bad))
    errors = await gw.reload_from_file()
    for key in (
        "pools.default.policy",
        "pools.default.health.interval_s",
        "pools.default.queue.max_size",
        "pools.default.queue.bogus",
    ):
        assert any(e.startswith(key) for e in errors), (key, errors)
    assert gw.config is running
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.status == 200
    text = gw.recorder.exposition().decode()
    assert 'gateway_config_reloads_total{result="refused"} 1.0' in text
    try:
        parse_config(bad)
    except ConfigError as exc:
        assert sorted(exc.errors) == sorted(errors)


async def test_sighup_and_file_watch_reload(backend, tmp_path: Path) -> None:
    b = await backend(ok_handler)
    port, admin = free_port(), free_port()
    config = pool_config([b.url])
    config["listen"]["port"], config["admin"]["port"] = port, admin
    config["watch_config"] = True
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "--config", str(path), cwd=ROOT
    )

    async def reloads(session: aiohttp.ClientSession) -> float:
        try:
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as resp:
                for line in (await resp.text()).splitlines():
                    if line.startswith('gateway_config_reloads_total{result="applied"}'):
                        return float(line.split()[-1])
        except aiohttp.ClientError:
            return -1
        return 0

    try:
        async with aiohttp.ClientSession() as session:

            async def reloaded(times: int) -> bool:
                return await reloads(session) == times

            await eventually(lambda: reloaded(0), within=10, interval=0.1)  # up, not reloaded
            proc.send_signal(signal.SIGHUP)
            await eventually(lambda: reloaded(1), within=5, interval=0.1)
            config["pools"]["default"]["policy"] = "p2c"
            path.write_text(yaml.safe_dump(config))  # the watcher notices by itself
            await eventually(lambda: reloaded(2), within=5, interval=0.1)
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0


async def test_reload_changes_autoscale_targets_and_can_turn_it_off(
    backend, gateway, client, tmp_path: Path
) -> None:
    static = await backend(ok_handler)
    config = scaled_config("default", SIM_PROCESS)
    config["state_dir"] = str(tmp_path)
    gw = await gateway(config)
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] == 1, within=20)
    config["pools"]["default"]["autoscale"]["min_replicas"] = 2
    await gw.reload(parse_config(config))
    assert gw.autoscalers["default"] is scaler  # updated in place, history kept
    await eventually(lambda: scaler.count["ready"] == 2, within=20)

    del config["pools"]["default"]["autoscale"]
    config["pools"]["default"]["backends"] = [static.url]
    await gw.reload(parse_config(config))
    assert "default" not in gw.autoscalers
    assert list((tmp_path / "replicas").glob("*.json")) == []  # drained and stopped
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.status == 200 and static.hits == 1
