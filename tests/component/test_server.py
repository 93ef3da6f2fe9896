"""The client listener at the byte level: framing, keep-alive, pipelining, bad input.

These speak raw HTTP/1.x over sockets, since a client library would hide exactly the
behaviour under test (what goes on the wire, when the connection closes).
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from tests.component.conftest import ok_handler, pool_config
from tests.conftest import eventually


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"path": request.path_qs, "body": body.decode()})


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), and its body however framed."""
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int(await reader.readline(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body = await asyncio.wait_for(reader.read(), 5)  # delimited by the connection's end
    return status, headers, body


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


async def test_pipelined_requests_are_answered_in_order(backend, gateway) -> None:
    b = await backend(echo)
    gw = await gateway(pool_config([b.url]))
    reader, writer = await connect(gw.port)
    writer.write(b"".join(post(f"/p?n={i}", b"%d" % i) for i in range(5)))
    for i in range(5):
        status, _, body = await read_response(reader)
        assert status == 200
        assert orjson.loads(body) == {"path": f"/p?n={i}", "body": str(i)}
    writer.close()


async def test_a_chunked_request_body_arrives_whole(backend, gateway) -> None:
    b = await backend(echo)
    gw = await gateway(pool_config([b.url]))
    reader, writer = await connect(gw.port)
    writer.write(
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    status, _, body = await read_response(reader)
    assert status == 200 and orjson.loads(body)["body"] == "hello world"
    writer.write(post("/p", b"again"))  # and the connection is still good
    assert orjson.loads((await read_response(reader))[2])["body"] == "again"
    writer.close()


async def test_a_body_of_tiny_chunks_waits_its_turns_and_arrives_whole(backend, gateway) -> None:
    """600 KB in 2-byte chunks: each read of thousands of chunks costs the parser
    milliseconds, so the connection pauses after each as long as it cost (the figure is
    in load/RESULTS.md, ``python -m load.attack --attacks tiny-chunks``). Meanwhile
    another client is answered, and the body reaches the replica byte for byte."""
    b = await backend(echo)
    gw = await gateway(pool_config([b.url], max_inflight_per_replica=4))
    reader, writer = await connect(gw.port)
    writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    pairs = [b"%02d" % (i % 100) for i in range(300_000)]
    writer.write(b"".join(b"2\r\n" + pair + b"\r\n" for pair in pairs) + b"0\r\n\r\n")
    other_reader, other_writer = await connect(gw.port)
    other_writer.write(post("/p", b"meanwhile"))
    assert orjson.loads((await read_response(other_reader))[2])["body"] == "meanwhile"
    status, _, body = await read_response(reader)
    assert status == 200 and orjson.loads(body)["body"] == b"".join(pairs).decode()
    writer.close()
    other_writer.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent(backend, gateway) -> None:
    b = await backend(echo)
    gw = await gateway(pool_config([b.url]))
    reader, writer = await connect(gw.port)
    head = post("/p", b"", "Expect: 100-continue").replace(
        b"Content-Length: 0", b"Content-Length: 4"
    )
    writer.write(head)
    status, _, _ = await read_response(reader)
    assert status == 100
    writer.write(b"body")
    status, _, body = await read_response(reader)
    assert status == 200 and orjson.loads(body)["body"] == "body"
    writer.close()


async def test_an_http_1_0_client_gets_a_stream_that_ends_with_the_connection(
    backend, gateway
) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)  # no length: chunked on the replica's side
        for part in (b"one ", b"two"):
            await resp.write(part)
        return resp

    b = await backend(stream)
    gw = await gateway(pool_config([b.url]))
    reader, writer = await connect(gw.port)
    writer.write(b"GET /s HTTP/1.0\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 200 and body == b"one two"
    assert "transfer-encoding" not in headers and headers["connection"] == "close"
    writer.close()


async def test_an_oversized_chunked_body_gets_413_and_the_connection_closes(
    backend, gateway
) -> None:
    b = await backend(ok_handler)
    gw = await gateway({**pool_config([b.url]), "max_body_bytes": 1024})
    reader, writer = await connect(gw.port)
    writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"800\r\n" + b"x" * 2048 + b"\r\n")  # and more would follow
    status, headers, _ = await read_response(reader)
    assert status == 413 and headers["connection"] == "close"
    assert await closed(reader)
    assert b.hits == 0


async def test_an_answer_before_the_body_was_read_closes_the_connection(backend, gateway) -> None:
    b = await backend(ok_handler)
    config = pool_config([b.url])
    config["routes"] = [{"path": "/predict", "pool": "default"}]
    gw = await gateway(config)
    reader, writer = await connect(gw.port)
    writer.write(post("/elsewhere", b"x" * 100)[:-50])  # half the body
    status, headers, _ = await read_response(reader)
    assert status == 404 and headers["connection"] == "close"
    assert await closed(reader)


async def test_a_malformed_chunked_body_gets_400(backend, gateway) -> None:
    b = await backend(echo)
    gw = await gateway(pool_config([b.url]))
    reader, writer = await connect(gw.port)
    writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    status, _, body = await read_response(reader)
    assert status == 400 and b"malformed" in body
    assert await closed(reader)
    assert b.hits == 0


async def test_a_malformed_request_after_a_good_one_lets_the_good_one_finish(
    backend, gateway
) -> None:
    b = await backend(echo)
    gw = await gateway(pool_config([b.url]))
    reader, writer = await connect(gw.port)
    writer.write(post("/good", b"ok") + b"BROKEN\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 200 and orjson.loads(body)["body"] == "ok"
    assert (await read_response(reader))[0] == 400
    assert await closed(reader)


async def test_a_request_target_that_is_not_a_path_gets_400(backend, gateway) -> None:
    b = await backend(ok_handler)
    gw = await gateway(pool_config([b.url]))
    reader, writer = await connect(gw.port)
    writer.write(b"GET http://elsewhere/p HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 400
    assert b.hits == 0
    writer.close()


async def test_head_gets_no_body_and_204_no_length(backend, gateway) -> None:
    async def no_content(request: web.Request) -> web.Response:
        return web.Response(status=204)

    b = await backend(no_content)
    gw = await gateway(pool_config([b.url]))
    reader, writer = await connect(gw.port)
    writer.write(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    _, full, body = await read_response(reader)
    assert body and full["content-length"] == str(len(body))
    status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 ")
    writer.write(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
    while await reader.readline() != b"\r\n":  # HEAD's head, no body after it
        pass
    status, headers, _ = await read_response(reader)
    assert status == 204 and "content-length" not in headers
    writer.close()


async def test_stop_closes_idle_connections_and_lets_busy_ones_finish(backend, gateway) -> None:
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await gate.wait()
        return web.json_response({"done": True})

    b = await backend(slow)
    gw = await gateway(pool_config([b.url]))
    idle_reader, idle_writer = await connect(gw.port)
    busy_reader, busy_writer = await connect(gw.port)
    busy_writer.write(post("/p", b"{}"))
    await eventually(lambda: b.hits == 1)
    stopping = asyncio.create_task(gw.stop())
    assert await closed(idle_reader)
    gate.set()
    status, headers, _ = await read_response(busy_reader)
    assert status == 200 and headers["connection"] == "close"
    await stopping
    idle_writer.close()
    busy_writer.close()


async def test_a_client_hanging_up_frees_its_replica_slot_and_queue_place(backend, gateway) -> None:
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await gate.wait()
        return web.json_response({"done": True})

    b = await backend(slow)
    gw = await gateway(pool_config([b.url], max_inflight_per_replica=1))
    pool = gw.pools["default"]
    running = await connect(gw.port)
    running[1].write(post("/p", b"{}"))
    await eventually(lambda: b.hits == 1)
    queued = await connect(gw.port)
    queued[1].write(post("/p", b"{}"))
    await eventually(lambda: pool.queued == 1)
    queued[1].close()
    await eventually(lambda: pool.queued == 0)
    running[1].close()
    await eventually(lambda: pool.inflight == 0)  # long before the replica would answer
    assert b.hits == 1  # the queued one never reached it
    text = gw.recorder.exposition().decode()
    assert 'code="4xx"' in text  # counted as 499, client closed
    gate.set()


async def test_a_client_stalling_mid_body_gets_408(backend, gateway) -> None:
    b = await backend(echo)
    gw = await gateway({**pool_config([b.url]), "limits": {"body_timeout_s": 0.2}})
    reader, writer = await connect(gw.port)
    writer.write(post("/p", b"0123456789")[:-7])  # 3 of 10 body bytes, then silence
    status, headers, body = await read_response(reader)
    assert status == 408 and headers["connection"] == "close" and b"timed out" in body
    assert await closed(reader)
    assert b.hits == 0
