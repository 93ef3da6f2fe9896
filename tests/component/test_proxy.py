"""The request path over real sockets: fidelity, streaming, limits, errors."""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import web

from tests.component.conftest import ok_handler, pool_config
from tests.conftest import eventually


async def echo(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": (await request.read()).hex(),
        },
        headers={"X-Backend": "echo", "Set-Cookie": "a=1"},
    )


async def test_request_and_response_pass_through_intact(backend, gateway, client) -> None:
    b = await backend(echo)
    gw = await gateway(pool_config([b.url]))
    body = bytes(range(256)) * 4
    async with client.put(
        f"{gw.url}/v1/models/m:predict?q=a%20b&x=1&x=2",
        data=body,
        headers={
            "X-Custom": "yes",
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "hop-by-hop via Connection",
            "Keep-Alive": "timeout=5",
            "Content-Type": "application/octet-stream",
        },
    ) as resp:
        assert resp.status == 200
        seen = await resp.json()
        assert resp.headers["X-Backend"] == "echo"
        assert resp.headers["Set-Cookie"] == "a=1"
        request_id = resp.headers["X-Request-ID"]
    assert seen["method"] == "PUT"
    assert seen["path"] == "/v1/models/m:predict"
    assert seen["raw_path"] == "/v1/models/m:predict?q=a%20b&x=1&x=2"
    assert bytes.fromhex(seen["body"]) == body
    headers = seen["headers"]
    assert headers["x-custom"] == "yes"
    assert headers["content-type"] == "application/octet-stream"
    assert "x-secret" not in headers and "keep-alive" not in headers
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-request-id"] == request_id and len(request_id) == 32


async def test_client_request_id_and_forwarded_for_are_kept(backend, gateway, client) -> None:
    b = await backend(echo)
    gw = await gateway({**pool_config([b.url]), "trusted_proxies": ["127.0.0.1"]})
    sent = {"X-Request-ID": "abc-123", "X-Forwarded-For": "10.0.0.7"}
    async with client.get(f"{gw.url}/x", headers=sent) as resp:
        seen = (await resp.json())["headers"]
        assert resp.headers["X-Request-ID"] == "abc-123"
    assert seen["x-request-id"] == "abc-123"
    assert seen["x-forwarded-for"] == "10.0.0.7, 127.0.0.1"


async def test_sse_events_reach_the_client_as_they_are_produced(backend, gateway, client) -> None:
    release_last = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await release_last.wait()  # the last event exists only after the client saw the first
        await resp.write(b"data: last\n\n")
        await resp.write_eof()
        return resp

    b = await backend(sse)
    gw = await gateway(pool_config([b.url]))
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert first == b"data: first\n\n"
        release_last.set()
        assert await resp.content.read() == b"data: last\n\n"


async def test_large_response_with_known_length_streams_through(backend, gateway, client) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: above the one-write buffer limit

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=payload)

    b = await backend(big)
    gw = await gateway(pool_config([b.url]))
    async with client.get(f"{gw.url}/big") as resp:
        assert resp.headers["Content-Length"] == str(len(payload))
        assert await resp.read() == payload


async def test_oversized_body_gets_413_and_the_gateway_keeps_serving(
    backend, gateway, client
) -> None:
    b = await backend(ok_handler)
    gw = await gateway({**pool_config([b.url]), "max_body_bytes": 1024})
    async with client.post(f"{gw.url}/predict", data=b"x" * 2048) as resp:
        assert resp.status == 413
        assert (await resp.json())["status"] == 413
    async with client.post(f"{gw.url}/predict", data=b"x" * 1024) as resp:
        assert resp.status == 200
    assert b.hits == 1


async def test_unrouted_path_gets_404(backend, gateway, client) -> None:
    b = await backend(ok_handler)
    config = pool_config([b.url])
    config["routes"] = [{"path": "/predict", "pool": "default"}]
    gw = await gateway(config)
    async with client.post(f"{gw.url}/predictions") as resp:
        assert resp.status == 404
    async with client.post(f"{gw.url}/predict/v2") as resp:
        assert resp.status == 200


async def test_malformed_http_gets_400_and_does_not_disturb_others(
    backend, gateway, client
) -> None:
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await gate.wait()
        return web.json_response({"ok": True})

    b = await backend(slow)
    gw = await gateway(pool_config([b.url]))
    in_flight = asyncio.create_task(client.post(f"{gw.url}/predict", data=b"{}"))
    await asyncio.sleep(0.05)
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(garbage)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line.split()[1].startswith(b"4"), status_line
        writer.close()
    gate.set()
    resp = await in_flight
    assert resp.status == 200
    resp.release()


async def test_gateway_errors_are_json(backend, gateway, client) -> None:
    gw = await gateway(pool_config(["http://127.0.0.1:1"], retries={"attempts": 1}))
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.status == 502
        assert orjson.loads(await resp.read())["status"] == 502


async def test_healthz(gateway, client) -> None:
    gw = await gateway(pool_config(["http://127.0.0.1:1"]))
    async with client.get(f"{gw.url}/healthz") as resp:
        assert resp.status == 200


async def test_a_client_leaving_mid_stream_is_not_held_against_the_replica(
    backend, gateway, client
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(50):
            await resp.write(b"data: %d\n\n" % i)
            await asyncio.sleep(0.02)
        return resp

    b = await backend(endless)
    gw = await gateway(pool_config([b.url]))
    resp = await client.post(f"{gw.url}/predict")
    await resp.content.readuntil(b"\n\n")
    resp.close()  # hang up mid-stream
    replica = next(iter(gw.pools["default"].replicas.values()))
    await eventually(lambda: replica.inflight == 0, within=5)
    assert replica.health.failures == 0
    text = gw.recorder.exposition().decode()
    assert 'code="4xx"' in text  # counted as 499, client closed


async def test_each_request_is_logged_at_debug_with_its_fields(
    backend, gateway, client, caplog
) -> None:
    b = await backend(ok_handler)
    gw = await gateway(pool_config([b.url]))
    with caplog.at_level(logging.DEBUG, logger="gateway.dataplane.proxy"):
        async with client.post(f"{gw.url}/predict", headers={"X-Request-ID": "r-1"}) as resp:
            assert resp.status == 200
    (entry,) = [r for r in caplog.records if r.getMessage() == "request"]
    assert entry.request_id == "r-1" and entry.status == 200  # type: ignore[attr-defined]
    assert entry.replica == b.url[7:] and entry.pool == "default"  # type: ignore[attr-defined]
    assert entry.latency_ms > 0  # type: ignore[attr-defined]


async def test_gateway_errors_carry_the_request_id(gateway, client) -> None:
    gw = await gateway(pool_config(["http://127.0.0.1:1"], retries={"attempts": 1}))
    async with client.post(f"{gw.url}/predict", headers={"X-Request-ID": "r-2"}) as resp:
        assert resp.status == 502 and resp.headers["X-Request-ID"] == "r-2"


async def test_a_body_delimited_by_connection_close_is_relayed_whole(gateway, client) -> None:
    """An HTTP/1.0-style replica: no length, no chunks, the body ends at EOF."""

    async def old_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # the request head; this test sends no body
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        for part in (b"first ", b"second ", b"last"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.close()

    server = await asyncio.start_server(old_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = await gateway(pool_config([f"http://127.0.0.1:{port}"]))
    async with server:
        for _ in range(2):  # the second needs a new connection: the first was closed
            async with client.get(f"{gw.url}/old") as resp:
                assert resp.status == 200
                assert await resp.read() == b"first second last"


async def test_upstream_connections_are_kept_alive_and_reused(backend, gateway, client) -> None:
    peers: set[object] = set()

    async def note_peer(request: web.Request) -> web.Response:
        if request.path != "/health":
            peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"ok": True})

    b = await backend(note_peer)
    gw = await gateway(pool_config([b.url]))
    for _ in range(20):
        async with client.post(f"{gw.url}/predict", data=b"{}") as resp:
            assert resp.status == 200
    assert len(peers) == 1  # one connection from the gateway, reused twenty times
