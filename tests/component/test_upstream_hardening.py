"""The upstream client against replicas that break HTTP framing, over real sockets.

A replica is a raw TCP server here, so that each test controls the exact bytes: an answer
longer than its Content-Length, bytes sent while the connection idles, absurd lengths, an
unrequested protocol switch. None of them may reach another request, or escape as
anything but a Disconnected that closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from gateway.http.client import Detach, Disconnected, Timeouts, Upstream, UpstreamResponse
from tests.component.conftest import pool_config
from tests.conftest import eventually

T2 = Timeouts(2, 2, 2)

# The replica's answer to one request: it writes what it likes on the connection.
Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class RawReplica:
    """A TCP server on 127.0.0.1 that reads whole requests and lets ``answer`` reply with
    exact bytes. It counts the connections it accepted and those the client hung up."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.hung_up = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self._serving: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> RawReplica:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._serving[task] = writer
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.hung_up += 1
                    return
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                body = await reader.readexactly(int(length[1])) if length else b""
                await self.answer(head + body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.hung_up += 1
        finally:
            writer.close()
            del self._serving[task]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for writer in self._serving.values():
            writer.close()  # its reader sees the end: the handler returns
        await asyncio.gather(*self._serving)


@pytest.fixture
async def raw_replica() -> AsyncIterator[Callable[[Answer], Awaitable[RawReplica]]]:
    started: list[RawReplica] = []

    async def make(answer: Answer) -> RawReplica:
        replica = await RawReplica(answer).start()
        started.append(replica)
        return replica

    yield make
    for replica in started:
        await replica.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


async def get(up: Upstream, replica: RawReplica, target: str = "/") -> UpstreamResponse:
    return await up.request("GET", ("127.0.0.1", replica.port), target, [("Host", "r")], b"", T2)


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


# The start of a response that, parsed ahead of the next one, would make it a redirect
# chosen by this exchange: its Location value runs on into the next status line.
SMUGGLED = b"HTTP/1.1 302 Found\r\nLocation: /chosen-by-the-first?"

NO_PROBES = {"enabled": False}  # a gateway's replica connections are then the proxy's only


@pytest.mark.parametrize("when", ["same write", "later write", "while idle"])
async def test_bytes_past_a_response_never_reach_the_next_request(
    raw_replica, upstream, when
) -> None:
    """Whether the extra bytes come with the response, after it, or once the connection
    idles in the pool: the first answer is intact, and the next request gets its own."""
    released, sent_extra = asyncio.Event(), asyncio.Event()

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        if b"/second" in request:
            writer.write(ok(b"second"))
        elif when == "same write":
            writer.write(ok(b"first") + SMUGGLED)
        else:
            writer.write(ok(b"first"))
            await writer.drain()
            if when == "while idle":
                await released.wait()
            await asyncio.sleep(0.02)
            writer.write(SMUGGLED)
        await writer.drain()
        sent_extra.set()

    replica = await raw_replica(answer)
    first = await get(upstream, replica)
    assert (first.status, await first.read()) == (200, b"first")
    if when == "while idle":
        first.release()  # a clean exchange: the connection goes back to the pool
        released.set()
    await sent_extra.wait()
    await eventually(lambda: replica.hung_up == 1, within=2)  # the client closed it
    assert [name for name, _ in first.headers] == ["Content-Length"]
    first.release()  # released already while idle: a second call is a no-op

    second = await get(upstream, replica, "/second")
    assert (second.status, await second.read()) == (200, b"second")
    assert [name for name, _ in second.headers] == ["Content-Length"]
    second.release()
    assert replica.connections == 2


@pytest.mark.parametrize("length", ["0" * 4998 + "2", "1" + "0" * 18], ids=["5000", "19"])
async def test_an_absurd_content_length_is_a_malformed_response(
    raw_replica, upstream, length
) -> None:
    """Digits that llhttp takes (a value past 2**64 it rejects itself) but no body has."""

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\nok" % length.encode())
        await writer.drain()

    replica = await raw_replica(answer)
    with pytest.raises(Disconnected, match="malformed response"):
        await get(upstream, replica)
    await eventually(lambda: replica.hung_up == 1, within=2)  # closed, not leaked


async def test_an_18_digit_content_length_with_trailing_space_is_a_length(
    raw_replica, upstream
) -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 000000000000000002 \r\n\r\nok")
        await writer.drain()

    replica = await raw_replica(answer)
    response = await get(upstream, replica)
    assert (response.content_length, await response.read()) == (2, b"ok")
    response.release()


async def test_an_unrequested_101_is_a_malformed_response(raw_replica, upstream) -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\n\x81\x05hello"
        )
        await writer.drain()

    replica = await raw_replica(answer)
    with pytest.raises(Disconnected, match="malformed response: 101"):
        await get(upstream, replica)
    await eventually(lambda: replica.hung_up == 1, within=2)


async def test_an_over_sending_replica_never_mixes_two_clients_answers(
    raw_replica, gateway
) -> None:
    """Through the gateway: each answer carries its own client's token and no other's,
    though every answer of the replica runs past its Content-Length into a redirect that
    names the token of the exchange it came with."""

    async def echo(request: bytes, writer: asyncio.StreamWriter) -> None:
        token = re.search(rb"tok\d+x", request)
        assert token is not None
        writer.write(ok(token[0]) + SMUGGLED.replace(b"first", token[0]))
        await writer.drain()

    replica = await raw_replica(echo)
    gw = await gateway(pool_config([f"http://127.0.0.1:{replica.port}"], health=NO_PROBES))
    async with aiohttp.ClientSession() as one, aiohttp.ClientSession() as two:
        for i in range(200):
            token = f"tok{i}x"
            client = (one, two)[i % 2]
            async with client.post(f"{gw.url}/predict", data=token, allow_redirects=False) as resp:
                body = await resp.read()
                seen = b" ".join(v.encode() for v in resp.headers.values()) + b" " + body
                assert (resp.status, body) == (200, token.encode()), (i, resp.headers)
                assert re.findall(rb"tok\d+x", seen) == [token.encode()], (i, seen)


async def test_a_5000_digit_content_length_gets_the_client_a_502(
    raw_replica, gateway, client
) -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %s2\r\n\r\nok" % (b"0" * 4999))
        await writer.drain()

    replica = await raw_replica(answer)
    gw = await gateway(pool_config([f"http://127.0.0.1:{replica.port}"], health=NO_PROBES))
    async with client.post(f"{gw.url}/predict") as resp:
        assert resp.status == 502
    await eventually(lambda: replica.hung_up == replica.connections, within=2)  # none leaked


@pytest.mark.parametrize("ending", ["answers", "never answers", "breaks mid-body"])
async def test_a_detached_exchange_runs_to_its_end_in_the_background(
    raw_replica, upstream, ending
) -> None:
    """The caller stops waiting at once (``Detach`` on the head); the exchange goes on:
    a full answer is read and dropped and its connection reused, and ``finished`` gets
    the head's latency and status, or None when no whole answer came."""
    outcomes: list[tuple[float, int | None]] = []

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        if b"/next" in request:
            writer.write(ok(b"next"))
        elif ending == "answers":
            await asyncio.sleep(0.2)
            writer.write(ok(b"late"))
        elif ending == "breaks mid-body":
            await asyncio.sleep(0.2)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
            writer.close()
            return
        else:
            await asyncio.sleep(1)  # past the head's deadline (0.5 s)
        await writer.drain()

    def detach(head: asyncio.Future[None]) -> None:
        head.set_exception(Detach(lambda latency_s, status: outcomes.append((latency_s, status))))

    replica = await raw_replica(answer)
    with pytest.raises(Detach):
        await upstream.request(
            "GET",
            ("127.0.0.1", replica.port),
            "/",
            [("Host", "r")],
            b"",
            Timeouts(2, 0.5, 2),
            detach,
        )
    assert not outcomes  # the caller was let go before any answer
    await eventually(lambda: len(outcomes) == 1, within=3)
    latency_s, status = outcomes[0]
    if ending == "answers":
        assert status == 200 and 0.2 <= latency_s < 0.5
        response = await get(upstream, replica, "/next")
        assert await response.read() == b"next"
        assert replica.connections == 1  # the detached exchange's connection, reused
    else:
        assert status is None
        # the deadline counts from before the connect, the latency from the send
        assert latency_s >= (0.4 if ending == "never answers" else 0.2)


async def test_a_connection_answered_before_its_request_was_sent_is_not_reused(
    upstream,
) -> None:
    """A replica that answers (a 413, keep-alive) after reading only the head, then reads
    no more: the body still queued on the connection would sit before the next request,
    which would wait on a replica that never reads it. The connection is closed instead,
    and the next request gets a fresh one."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        if b"/big" in head:
            writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        else:
            writer.write(ok(b"next"))
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # the peer's end: this replica reads nothing more before it

    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=2**16)
    port = server.sockets[0].getsockname()[1]
    try:
        body = b"x" * (32 << 20)  # far more than the socket buffers hold
        response = await upstream.request(
            "POST", ("127.0.0.1", port), "/big", [("Host", "r")], body, T2
        )
        assert response.status == 413
        await response.read()
        response.release()
        response = await upstream.request(
            "GET", ("127.0.0.1", port), "/next", [("Host", "r")], b"", T2
        )
        assert await response.read() == b"next"
        response.release()
        assert connections == 2
    finally:
        server.close()
