"""The admin API over real sockets: auth, every route, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import parse_config
from gateway.ops.admin import OPENAPI
from tests.component.conftest import ok_handler, pool_config
from tests.conftest import SIM_PROCESS, eventually, scaled_config

TOKEN = "s3cret-" + secrets.token_hex(8)


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"TEST_GATEWAY_TOKEN_{secrets.token_hex(4).upper()}"
    monkeypatch.setenv(name, TOKEN)
    return name


def with_admin(config: dict[str, Any], token_env: str) -> dict[str, Any]:
    config["admin"]["token_env"] = token_env
    return config


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_401_without_or_with_a_wrong_token(backend, gateway, client, token_env) -> None:
    b = await backend(ok_handler)
    gw = await gateway(with_admin(pool_config([b.url]), token_env))
    admin = f"http://127.0.0.1:{gw.admin_port}"
    for headers in ({}, auth("wrong"), {"Authorization": TOKEN}, auth(TOKEN + "x")):
        async with client.get(f"{admin}/admin/pools", headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        async with client.post(f"{admin}/admin/reload", headers=headers) as resp:
            assert resp.status == 401
    async with client.get(f"{admin}/metrics") as resp:
        assert resp.status == 200  # metrics stay open


async def test_admin_routes_are_off_without_a_token(backend, gateway, client) -> None:
    b = await backend(ok_handler)
    config = pool_config([b.url])
    config["admin"]["token_env"] = "TEST_GATEWAY_TOKEN_NEVER_SET"
    gw = await gateway(config)
    admin = f"http://127.0.0.1:{gw.admin_port}"
    async with client.get(f"{admin}/admin/pools", headers=auth()) as resp:
        assert resp.status == 404
        assert "no token" in (await resp.json())["error"]
    async with client.get(f"{admin}/metrics") as resp:
        assert resp.status == 200


@pytest.mark.parametrize("weak", ["admin", "change-me", "short-token-15c"])
async def test_a_placeholder_or_short_token_leaves_the_admin_routes_off(
    backend, gateway, client, monkeypatch: pytest.MonkeyPatch, weak: str
) -> None:
    monkeypatch.setenv("TEST_GATEWAY_WEAK_TOKEN", weak)
    b = await backend(ok_handler)
    gw = await gateway(with_admin(pool_config([b.url]), "TEST_GATEWAY_WEAK_TOKEN"))
    admin = f"http://127.0.0.1:{gw.admin_port}"
    async with client.get(f"{admin}/admin/pools", headers=auth(weak)) as resp:
        assert resp.status == 404


async def test_token_from_a_file(backend, gateway, client, tmp_path: Path) -> None:
    b = await backend(ok_handler)
    (tmp_path / "token").write_text(TOKEN + "\n")
    config = pool_config([b.url])
    config["admin"].update(
        token_env="TEST_GATEWAY_TOKEN_NEVER_SET", token_file=str(tmp_path / "token")
    )
    gw = await gateway(config)
    async with client.get(f"http://127.0.0.1:{gw.admin_port}/admin/pools", headers=auth()) as resp:
        assert resp.status == 200


async def test_list_pools_and_drain_a_static_replica(backend, gateway, client, token_env) -> None:
    a, b = await backend(ok_handler), await backend(ok_handler)
    gw = await gateway(with_admin(pool_config([a.url, b.url]), token_env))
    admin = f"http://127.0.0.1:{gw.admin_port}"
    async with client.get(f"{admin}/admin/pools", headers=auth()) as resp:
        pools = (await resp.json())["pools"]
    pool = pools["default"]
    assert pool["policy"] == "least_connections" and pool["autoscaled"] is False
    assert {r["id"] for r in pool["replicas"]} == {a.url[7:], b.url[7:]}
    assert all(r["state"] == "ready" and r["healthy"] for r in pool["replicas"])

    async with client.post(
        f"{admin}/admin/pools/default/replicas/{a.url[7:]}/drain", headers=auth()
    ) as resp:
        assert resp.status == 202
    before = a.hits
    for _ in range(10):
        async with client.post(f"{gw.url}/predict") as resp:
            assert resp.status == 200
    assert a.hits == before
    async with client.post(
        f"{admin}/admin/pools/default/replicas/nope/drain", headers=auth()
    ) as resp:
        assert resp.status == 404
    async with client.post(f"{admin}/admin/pools/nope/replicas/x/drain", headers=auth()) as resp:
        assert resp.status == 404


async def test_scale_an_autoscaled_pool(gateway, client, token_env, tmp_path: Path) -> None:
    config = scaled_config("default", SIM_PROCESS)
    config["state_dir"] = str(tmp_path)
    gw = await gateway(with_admin(config, token_env))
    admin = f"http://127.0.0.1:{gw.admin_port}"
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] == 1, within=20)
    url = f"{admin}/admin/pools/default/scale"
    for bad in (
        b"not json",
        b'{"min_replicas": -1}',
        b'{"min_replicas": 3, "max_replicas": 2}',
        b'{"x": 1}',
        b'{"max_replicas": 1000000000}',
        b'{"max_replicas": 2.5}',
        b'{"max_replicas": true}',
    ):
        async with client.put(url, data=bad, headers=auth()) as resp:
            assert resp.status == 400, bad
    async with client.put(url, json={"min_replicas": 2, "max_replicas": 3}, headers=auth()) as resp:
        assert resp.status == 200
        body = await resp.json()
        assert (body["min_replicas"], body["max_replicas"]) == (2, 3)
    await eventually(lambda: scaler.count["ready"] == 2, within=20)
    async with client.get(f"{admin}/admin/pools", headers=auth()) as resp:
        replicas = (await resp.json())["pools"]["default"]["replicas"]
    assert len(replicas) == 2 and all(r["url"] for r in replicas)
    drained = replicas[0]["id"]
    async with client.post(
        f"{admin}/admin/pools/default/replicas/{drained}/drain", headers=auth()
    ) as resp:
        assert resp.status == 202
    await eventually(
        lambda: drained not in scaler.members and scaler.count["ready"] == 2, within=20
    )


async def test_scale_refuses_a_static_pool(backend, gateway, client, token_env) -> None:
    b = await backend(ok_handler)
    gw = await gateway(with_admin(pool_config([b.url]), token_env))
    admin = f"http://127.0.0.1:{gw.admin_port}"
    async with client.put(
        f"{admin}/admin/pools/default/scale", json={"min_replicas": 2}, headers=auth()
    ) as resp:
        assert resp.status == 409
    async with client.put(
        f"{admin}/admin/pools/none/scale", json={"min_replicas": 2}, headers=auth()
    ) as resp:
        assert resp.status == 404


async def test_the_openapi_document_matches_the_routes(backend, gateway, client, token_env) -> None:
    b = await backend(ok_handler)
    gw = await gateway(with_admin(pool_config([b.url]), token_env))
    async with client.get(
        f"http://127.0.0.1:{gw.admin_port}/admin/openapi.json", headers=auth()
    ) as resp:
        served = await resp.json()
    assert served == OPENAPI
    app = gw.admin_api.app()
    routed = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/admin")
        and route.method != "HEAD"
    }
    documented = {(method, path) for path, ops in OPENAPI["paths"].items() for method in ops}
    assert routed == documented


async def test_reload_through_the_api(backend, gateway, client, token_env, tmp_path: Path) -> None:
    a = await backend(ok_handler)
    config = with_admin(pool_config([a.url]), token_env)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    gw = await gateway(config, config_path=path)
    admin = f"http://127.0.0.1:{gw.admin_port}"
    config["pools"]["default"]["policy"] = "peak_ewma"
    path.write_text(yaml.safe_dump(config))
    async with client.post(f"{admin}/admin/reload", headers=auth()) as resp:
        assert resp.status == 200 and (await resp.json()) == {"reloaded": True}
    async with client.get(f"{admin}/admin/pools", headers=auth()) as resp:
        assert (await resp.json())["pools"]["default"]["policy"] == "peak_ewma"
    path.write_text("routes: [{path: predict, pool: nowhere}]\npools: {default: {policy: x}}\n")
    async with client.post(f"{admin}/admin/reload", headers=auth()) as resp:
        assert resp.status == 400
        errors = (await resp.json())["errors"]
    assert any(e.startswith("routes.0.path") for e in errors)
    assert any(e.startswith("pools.default.policy") for e in errors)
    await asyncio.sleep(0)
    assert gw.config.pools["default"].policy == "peak_ewma"  # the running config stayed


async def test_metrics_scraped_while_the_config_reloads_and_replicas_change(
    backend, gateway, client, tmp_path: Path
) -> None:
    """Scrapes render in a worker thread from a snapshot taken on the loop, so a reload
    that adds and removes pools, and an autoscaler that starts and stops replicas, never
    change what a scrape is reading: every one of them answers and parses."""
    b = await backend(ok_handler)
    config = scaled_config("default", SIM_PROCESS)
    config["state_dir"] = str(tmp_path)
    gw = await gateway(config)
    scaler = gw.autoscalers["default"]
    await eventually(lambda: scaler.count["ready"] == 1, within=20)
    url = f"http://127.0.0.1:{gw.admin_port}/metrics"
    scrapes: list[int] = []
    done = asyncio.Event()

    async def scrape() -> None:
        while not done.is_set():
            async with client.get(url) as resp:
                assert resp.status == 200
                families = list(text_string_to_metric_families(await resp.text()))
            assert any(f.name == "gateway_inflight" for f in families)
            scrapes.append(len(families))

    scrapers = [asyncio.create_task(scrape()) for _ in range(3)]
    extra = {"backends": [b.url], "health": {"interval_s": 0.2}}
    for i in range(20):  # a second pool comes and goes; the autoscaled one grows, then shrinks
        pools = dict(config["pools"])
        if i % 2 == 0:
            pools["extra"] = extra
        bounds = {"min_replicas": 2 if i < 10 else 1, "max_replicas": 2}
        pools["default"] = {
            **pools["default"],
            "autoscale": {**pools["default"]["autoscale"], **bounds},
        }
        await gw.reload(parse_config({**config, "pools": pools}))
        await asyncio.sleep(0.1)
        if i == 9:
            await eventually(lambda: scaler.count["ready"] == 2, within=20)
    await eventually(lambda: scaler.count["ready"] == 1, within=20)
    done.set()
    await asyncio.gather(*scrapers)  # a failed scrape raises here
    assert len(scrapes) >= 20
