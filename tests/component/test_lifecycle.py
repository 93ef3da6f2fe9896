"""The gateway as an operator runs it: the CLI, SIGTERM draining, and /metrics."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.component.conftest import ok_handler, pool_config
from tests.conftest import eventually, free_port

ROOT = Path(__file__).resolve().parents[2]


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


BAD_CONFIG = """
listen: {port: 70000}
routes:
  - {path: predict, pool: nowhere}
pools:
  default:
    policy: fastest
    backends: [ftp://x]
    health: {interval_s: 0}
    typo_key: 1
"""


async def test_check_config_reports_every_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_CONFIG)
    code, out = await run_cli("check-config", str(path))
    assert code == 1
    for expected in (
        "listen.port: must be <= 65535",
        "routes.0.path: must start with '/'",
        "pools.default.policy: unknown policy 'fastest'",
        "pools.default.backends:",
        "pools.default.health.interval_s: must be > 0",
        "pools.default.typo_key: unknown key",
    ):
        assert expected in out, (expected, out)


async def test_run_refuses_an_invalid_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_CONFIG)
    code, out = await run_cli("run", "--config", str(path))
    assert code == 1 and "pools.default.health.interval_s" in out


async def test_every_config_file_in_the_repo_is_valid() -> None:
    for path in sorted((ROOT / "config").glob("*.yaml")):
        code, out = await run_cli("check-config", str(path))
        assert code == 0, out


async def test_sigterm_lets_an_in_flight_request_finish(backend, tmp_path: Path) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response({"done": True})

    b = await backend(slow)
    port, admin = free_port(), free_port()
    config = pool_config([b.url])
    config["listen"]["port"], config["admin"]["port"] = port, admin
    config["drain_timeout_s"] = 10
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "--config", str(path), cwd=ROOT
    )
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"

            async def up() -> bool:
                try:
                    async with session.get(f"{url}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(up, 10, 0.1, what="the gateway listening")
            request = asyncio.create_task(session.post(f"{url}/predict"))
            await eventually(lambda: b.hits == 1)
            proc.send_signal(signal.SIGTERM)
            resp = await request
            assert resp.status == 200
            assert await resp.json() == {"done": True}
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            assert not await up()  # the listener is closed
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_metrics_parse_and_carry_the_families(backend, gateway, client) -> None:
    b = await backend(ok_handler)
    gw = await gateway(pool_config([b.url]))
    for _ in range(3):
        async with client.post(f"{gw.url}/predict") as resp:
            assert resp.status == 200
    async with client.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "gateway_requests",
        "gateway_request_duration_seconds",
        "gateway_inflight",
        "gateway_queue_depth",
        "gateway_queue_wait_seconds",
        "gateway_replica_up",
        "gateway_replica_ejected",
        "gateway_retries",
        "gateway_ejections",
    ):
        assert name in families, name
    requests = [
        s for s in families["gateway_requests"].samples if s.name == "gateway_requests_total"
    ]
    assert requests[0].labels == {"pool": "default", "replica": b.url[7:], "code": "2xx"}
    assert requests[0].value == 3
