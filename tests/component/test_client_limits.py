"""What one client may cost the gateway (``config.ClientLimits``), over raw sockets.

Each test plays one hostile or broken client and checks both sides: what it is answered,
and that the gateway let go of what it held (a connection, a replica's slot, buffered
bytes) while others are still served.
"""

from __future__ import annotations

import asyncio
import resource
import socket
from typing import Any

from aiohttp import web

from tests.component.conftest import ok_handler, pool_config
from tests.component.test_server import closed, connect, post, read_response
from tests.conftest import eventually


def limited(backends: list[str], **limits: Any) -> dict[str, Any]:
    return {**pool_config(backends), "limits": limits}


def refused(gw: Any, reason: str) -> float:
    """How many times ``gateway_client_refused_total`` counted ``reason``."""
    for line in gw.recorder.exposition().decode().splitlines():
        if line.startswith(f'gateway_client_refused_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def healthz(port: int) -> int:
    reader, writer = await connect(port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = await read_response(reader)
    writer.close()
    return status


async def test_a_long_request_target_gets_414_at_once_and_reaches_nobody(backend, gateway) -> None:
    b = await backend(ok_handler)
    gw = await gateway(limited([b.url], max_request_line_bytes=1024))
    reader, writer = await connect(gw.port)
    writer.write(b"GET /" + b"a" * 2000)  # no end of line: refused on length alone
    status, headers, _ = await read_response(reader)
    assert status == 414 and headers["connection"] == "close"
    assert await closed(reader) and b.hits == 0
    assert refused(gw, "request_line") == 1
    reader, writer = await connect(gw.port)  # at the limit: served
    writer.write(b"GET /" + b"a" * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200


async def test_a_huge_request_target_costs_others_nothing(backend, gateway) -> None:
    """Sent in small pieces, a 16 MB target is refused after its first 8 KiB; the URL is
    not rebuilt from its pieces quadratically meanwhile, so others are served."""
    b = await backend(ok_handler)
    gw = await gateway(pool_config([b.url]))
    reader, writer = await connect(gw.port)
    writer.write(b"GET /")
    for _ in range(64):  # 64 x 1 KiB: past the default 8 KiB after a few
        writer.write(b"b" * 1024)
        await asyncio.sleep(0)
    assert (await read_response(reader))[0] == 414
    assert await healthz(gw.port) == 200


async def test_header_blocks_past_their_size_or_count_get_431(backend, gateway) -> None:
    b = await backend(ok_handler)
    gw = await gateway(limited([b.url], max_header_bytes=4096, max_header_fields=10))
    many = "".join(f"X-H{i}: v\r\n" for i in range(11))
    large = "X-Big: " + "v" * 5000 + "\r\n"
    for extra, reason in ((many, "header_fields"), (large, "header_size")):
        reader, writer = await connect(gw.port)
        writer.write(f"GET / HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        status, headers, _ = await read_response(reader)
        assert status == 431 and headers["connection"] == "close"
        assert await closed(reader)
        assert refused(gw, reason) == 1
    assert b.hits == 0


async def test_one_header_value_sent_in_pieces_is_bounded_before_it_is_whole(
    backend, gateway
) -> None:
    """The parser holds a header's pieces until the header is whole: a value that never
    ends must be cut off by the bytes it has sent, not when it completes."""
    b = await backend(ok_handler)
    gw = await gateway(limited([b.url], max_request_line_bytes=1024, max_header_bytes=4096))
    reader, writer = await connect(gw.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    for _ in range(16):
        await asyncio.sleep(0.01)  # separate reads on the gateway's side
        writer.write(b"v" * 1024)
    status, _, _ = await read_response(reader)
    assert status == 431 and b.hits == 0


async def test_chunked_trailers_never_reach_the_replica(backend, gateway) -> None:
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"body": (await request.read()).decode()})

    b = await backend(record)
    gw = await gateway(pool_config([b.url]))
    reader, writer = await connect(gw.port)
    writer.write(
        b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\nHost: evil\r\nAuthorization: Bearer stolen\r\nX-Trailer: 1\r\n\r\n"
    )
    status, _, body = await read_response(reader)
    assert status == 200 and b'"body": "{}"' in body
    assert "authorization" not in seen[0] and "x-trailer" not in seen[0]
    assert seen[0]["host"] != "evil"


async def test_a_body_in_tiny_chunks_arrives_whole(backend, gateway) -> None:
    async def echo_length(request: web.Request) -> web.Response:
        return web.json_response({"length": len(await request.read())})

    b = await backend(echo_length)
    gw = await gateway(pool_config([b.url]))
    reader, writer = await connect(gw.port)
    chunks = b"".join(b"2\r\nab\r\n" for _ in range(20000))
    writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(chunks + b"0\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 200 and b'"length": 40000' in body
    await eventually(lambda: gw._listener.body_bytes == 0)  # nothing held once it is over


async def test_a_slow_head_gets_408_and_a_silent_connection_is_closed(backend, gateway) -> None:
    b = await backend(ok_handler)
    gw = await gateway(limited([b.url], header_timeout_s=0.3))
    silent = await connect(gw.port)
    reader, writer = await connect(gw.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    status, headers, _ = await read_response(reader)
    assert status == 408 and headers["connection"] == "close"
    assert await closed(silent[0])
    assert refused(gw, "header_timeout") == 2
    assert b.hits == 0


async def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(backend, gateway) -> None:
    b = await backend(ok_handler)
    gw = await gateway(limited([b.url], idle_timeout_s=0.3))
    reader, writer = await connect(gw.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    assert await closed(reader)


async def stream_forever(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    chunk = b"x" * 65536
    for _ in range(100_000):  # bounded: 6.5 GB, far more than any test reads
        await response.write(chunk)
    return response


async def test_a_client_that_never_reads_gives_its_slot_back_after_write_timeout(
    backend, gateway
) -> None:
    b = await backend(stream_forever)
    gw = await gateway(limited([b.url], write_timeout_s=0.5))
    pool = gw.pools["default"]
    stuck = []
    for _ in range(2):
        reader, writer = await connect(gw.port)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        stuck.append((reader, writer))
    await eventually(lambda: pool.inflight == 2)
    await eventually(lambda: pool.inflight == 0, within=5)
    assert refused(gw, "write_timeout") == 2
    text = gw.recorder.exposition().decode()
    assert 'code="4xx"' in text  # counted as 499: the client's doing, not the replica's


async def streams_and_answers(request: web.Request) -> web.StreamResponse:
    if request.path == "/stream":
        return await stream_forever(request)
    return web.json_response({"ok": True})


async def test_clients_that_read_nothing_hold_no_slot_of_their_replica(backend, gateway) -> None:
    """Answers parked on clients that stopped reading are not work for the replica: they
    neither count against its cap nor in the level its limit learns from, so two such
    clients on a replica capped at 2 leave the others served at once, long before the
    write timeout frees them."""
    b = await backend(streams_and_answers)
    config = limited([b.url], write_timeout_s=30)
    config["pools"]["default"] |= {"max_inflight_per_replica": 2, "concurrency_limit": "fixed"}
    gw = await gateway(config)
    pool = gw.pools["default"]
    replica = next(iter(pool.replicas.values()))
    stuck = []
    for _ in range(2):
        reader, writer = await connect(gw.port)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        stuck.append(writer)
    await eventually(lambda: replica.inflight == 2 and replica.parked == 2)
    reader, writer = await connect(gw.port)
    for _ in range(3):
        writer.write(post("/predict", b"{}"))
        status, _, _ = await asyncio.wait_for(read_response(reader), 2)
        assert status == 200
    writer.close()
    assert replica.inflight == 2 and replica.working == 0
    for writer in stuck:
        writer.close()
    await eventually(lambda: replica.inflight == 0 and replica.parked == 0)


async def test_pipelined_answers_wait_for_a_client_that_does_not_read(backend, gateway) -> None:
    """Thousands of pipelined requests on a connection that reads nothing: the gateway
    holds at most about one write buffer of answers, then cuts the client off."""
    b = await backend(ok_handler)
    gw = await gateway(limited([b.url], write_timeout_s=0.5))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little
    sock.connect(("127.0.0.1", gw.port))
    _, writer = await asyncio.open_connection(sock=sock)
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    writer.write(request * 50_000)  # 1.7 MB of requests, ~6 MB of answers
    await asyncio.sleep(0.3)
    conns = list(gw._listener.connections)
    assert len(conns) == 1
    buffered = conns[0].transport.get_write_buffer_size()
    assert buffered < 1024 * 1024  # about HIGH_WATER (256 KiB) and one answer, not 6 MB
    await eventually(lambda: not gw._listener.connections, within=5)
    assert refused(gw, "write_timeout") == 1
    assert await healthz(gw.port) == 200


async def test_at_the_connection_cap_the_longest_idle_one_makes_room(backend, gateway) -> None:
    gate = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await gate.wait()
        return web.json_response({"ok": True})

    b = await backend(hold)
    gw = await gateway(limited([b.url], max_connections=3))
    idle = [await connect(gw.port) for _ in range(3)]
    await eventually(lambda: len(gw._listener.connections) == 3)
    busy = []
    for _ in range(3):  # each takes the place of an idle one, which is closed
        reader, writer = await connect(gw.port)
        writer.write(post("/p", b"{}"))
        busy.append((reader, writer))
        await eventually(lambda: b.hits == len(busy))
    for reader, _ in idle:
        assert await closed(reader)
    reader, writer = await connect(gw.port)  # all 3 are busy: nobody to close
    status, headers, _ = await read_response(reader)
    assert status == 503 and headers["connection"] == "close"
    assert refused(gw, "connections") == 1
    gate.set()
    for reader, _ in busy:
        assert (await read_response(reader))[0] == 200


async def test_a_per_address_cap_turns_away_the_extra_connections(backend, gateway) -> None:
    b = await backend(ok_handler)
    gw = await gateway(limited([b.url], max_connections_per_ip=2))
    kept = [await connect(gw.port) for _ in range(2)]
    await eventually(lambda: len(gw._listener.connections) == 2)
    reader, _ = await connect(gw.port)
    assert (await read_response(reader))[0] == 503
    assert refused(gw, "connections_per_ip") == 1
    kept[0][1].close()
    await eventually(lambda: len(gw._listener.connections) == 1)
    assert await healthz(gw.port) == 200


async def test_bodies_past_the_shared_buffer_get_503_and_release_their_bytes(
    backend, gateway
) -> None:
    async def echo_length(request: web.Request) -> web.Response:
        return web.json_response({"length": len(await request.read())})

    b = await backend(echo_length)
    gw = await gateway(limited([b.url], max_buffered_body_bytes=10_000))
    reader, writer = await connect(gw.port)
    writer.write(post("/p", b"x" * 20_000))  # announced: refused before it is read
    status, headers, _ = await read_response(reader)
    assert status == 503 and headers["retry-after"] == "1"
    assert b.hits == 0
    reader, writer = await connect(gw.port)
    chunked = b"".join(b"3e8\r\n" + b"y" * 1000 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n"
    writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    assert (await read_response(reader))[0] == 503  # unannounced: refused as it grows
    await eventually(lambda: gw._listener.body_bytes == 0)
    assert refused(gw, "body_buffer") == 2
    reader, writer = await connect(gw.port)
    writer.write(post("/p", b"z" * 5000))
    status, _, body = await read_response(reader)
    assert status == 200 and b'"length": 5000' in body


async def test_limits_change_on_reload_and_the_descriptor_limit_is_raised(backend, gateway) -> None:
    b = await backend(ok_handler)
    config = pool_config([b.url])
    gw = await gateway(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard or hard == resource.RLIM_INFINITY
    from gateway.config import parse_config

    await gw.reload(parse_config({**config, "limits": {"max_request_line_bytes": 100}}))
    reader, writer = await connect(gw.port)
    writer.write(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 414


async def test_a_version_other_than_1_0_and_1_1_gets_505_and_reaches_nobody(
    backend, gateway
) -> None:
    b = await backend(ok_handler)
    gw = await gateway(pool_config([b.url]))
    for version, expected in ((b"2.0", 505), (b"1.2", 400), (b"3.0", 400)):  # 400: llhttp's
        reader, writer = await connect(gw.port)
        writer.write(b"GET / HTTP/" + version + b"\r\nHost: x\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert status == expected and headers["connection"] == "close"
    assert b.hits == 0
