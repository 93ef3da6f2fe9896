"""The client listener: HTTP/1.1 on asyncio protocols, parsed by llhttp (httptools).

Why not aiohttp's server: with the upstream side on its own client, profiles of the
gateway put aiohttp's server machinery (request objects, the StreamResponse state
machine, separate writes for head and body) at the top of what was left. The proxy needs
a narrow server, and this is it:

* a request is handed to the handler as soon as its head has arrived, so a 404 or a 413
  does not wait for the body; the body is read on demand, with ``100 Continue`` sent when
  the client asked for it, and the socket is paused while nobody reads, so a large body
  is pulled in only as fast as it is consumed; a client silent for ``BODY_TIMEOUT_S``
  mid-body, or for ``IDLE_TIMEOUT_S`` before a request head is complete, is let go;
* requests on one connection are answered in order (pipelined ones wait their turn); a
  client that hangs up before its answer began has its request cancelled, so a queue
  place or a replica is not kept busy for an answer nobody will read;
* a complete answer goes out in one write; a streamed one carries its known length or
  chunked framing and waits for the socket to drain above a high-water mark, so a slow
  client slows the replica's stream rather than growing the gateway's memory;
* a malformed request gets 400 and the connection closes; so does a connection whose
  answer went out before its request body was read to the end, since the bytes left on
  it cannot be told apart from the next request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools
import orjson

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024  # write buffer above which a stream waits; body bytes held unread
IDLE_TIMEOUT_S = 75.0  # a keep-alive connection with no request open is closed after this
BODY_TIMEOUT_S = 30.0  # the longest silence while a request body is being read
MAX_PIPELINED = 16  # requests queued on one connection before it stops being read
REASONS = {s.value: s.phrase for s in HTTPStatus}
NO_BODY_STATUS = frozenset({204, 304})

Handler = Callable[["Exchange"], Awaitable[None]]


class BadRequest(Exception):
    """The request body's framing is malformed."""


class BodyTimeout(Exception):
    """The client stopped sending its request body."""


class Exchange:
    """One request and the answer to it. The handler reads the request's fields and body
    and answers once: ``respond`` with a whole body, or ``start``, ``write``\\* and ``end``
    for a stream (``abort`` cuts a stream off)."""

    __slots__ = (
        "_bodiless",
        "_chunked",
        "_chunks",
        "_conn",
        "_size",
        "_waiter",
        "complete",
        "content_length",
        "expect_continue",
        "finished",
        "headers",
        "keep_alive",
        "method",
        "path",
        "remote",
        "started",
        "target",
        "version",
    )

    def __init__(
        self,
        conn: _Connection,
        method: str,
        target: str,
        version: str,
        headers: list[tuple[str, str]],
        keep_alive: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.target = target  # as sent: path and query, byte-exact
        self.path = target.partition("?")[0]
        self.version = version
        self.headers = headers
        self.remote = conn.remote
        self.keep_alive = keep_alive
        self.content_length: int | None = None
        self.expect_continue = False
        for name, value in headers:  # the few the server itself acts on
            low = name.lower()
            if low == "content-length":
                self.content_length = int(value) if value.isdigit() else None
            elif low == "expect":
                self.expect_continue = value.lower() == "100-continue" and version == "1.1"
        self.complete = False  # the whole request body has arrived
        self.started = False  # the answer's head went out
        self.finished = False
        self._chunks: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._chunked = False
        self._bodiless = method == "HEAD"  # and 204/304 answers: head only

    def header(self, name: str) -> str | None:
        """The first value of a header (``name`` in lower case)."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def client_gone(self) -> bool:
        return self._conn.lost

    # -- the request body --------------------------------------------------------------

    async def body(self, limit: int) -> bytes | None:
        """The whole body; None when it is larger than ``limit`` bytes."""
        if self.content_length is not None and self.content_length > limit:
            return None
        conn = self._conn
        if self.expect_continue and not self.complete:
            self.expect_continue = False
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self.complete:
            if self._size > limit:
                return None
            if conn.malformed:
                raise BadRequest(conn.malformed)
            if conn.lost:
                raise ConnectionResetError("the client closed the connection")
            self._waiter = conn.loop.create_future()
            conn.resume_reading()
            try:
                async with asyncio.timeout(BODY_TIMEOUT_S):  # off the hot path: rare wait
                    await self._waiter
            except TimeoutError:
                raise BodyTimeout(f"no body bytes for {BODY_TIMEOUT_S:g} s") from None
            finally:
                self._waiter = None
        if self._size > limit:
            return None
        return self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._waiter is not None:
            if not self._waiter.done():
                self._waiter.set_result(None)
        elif self._size > HIGH_WATER:
            self._conn.pause_reading()  # nobody is reading it yet: hold the client back

    def _arrived(self) -> None:
        self.complete = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the answer --------------------------------------------------------------------

    def respond(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        """A whole answer in one write."""
        head = self._head(status, headers, len(body))
        self._conn.write(head if self._bodiless else head + body)
        self._finish()

    def start(self, status: int, headers: list[tuple[str, str]], length: int | None) -> None:
        """The head of a streamed answer: its length if known, else chunked framing (or,
        for an HTTP/1.0 client, a body that ends when the connection does)."""
        if length is None and not (self._bodiless or status in NO_BODY_STATUS):
            if self.version == "1.1":
                self._chunked = True
            else:
                self.keep_alive = False
        self._conn.write(self._head(status, headers, length))

    async def write(self, data: bytes) -> None:
        conn = self._conn
        if conn.lost:
            raise ConnectionResetError("the client closed the connection")
        if self._bodiless:
            return
        if self._chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.write(data)
        await conn.drained()

    def end(self) -> None:
        if self._chunked:
            self._conn.write(b"0\r\n\r\n")
        self._finish()

    def abort(self) -> None:
        """Cut a started answer off: the client sees it incomplete, never a clean end."""
        self.keep_alive = False
        self._finish()

    def _head(self, status: int, headers: list[tuple[str, str]], length: int | None) -> bytes:
        self.started = True
        if status in NO_BODY_STATUS:
            self._bodiless = True
        # keep-alive needs the request read to the end (see the module's docstring)
        self.keep_alive = self.keep_alive and self.complete and not self._conn.server.closing
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        if status in NO_BODY_STATUS:
            pass
        elif self._chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        elif length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        if not self.keep_alive:
            lines.append("Connection: close\r\n")
        elif self.version == "1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    def _finish(self) -> None:
        self.finished = True
        if not self.keep_alive:
            self._conn.close()


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler on each in turn."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.lost = False
        self.queue: deque[Exchange] = deque()  # parsed, not yet answered; [0] is current
        self.parsing: Exchange | None = None  # the one whose body is arriving
        self.task: asyncio.Task[None] | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.drain: asyncio.Future[None] | None = None
        self.writing_paused = False
        self.malformed = ""  # why the connection's input stopped making sense
        self.owes_400 = True  # no request has answered for it yet
        self._url = b""
        self._headers: list[tuple[str, str]] = []

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else ""
        self.server.connections.add(self)
        self._idle()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # a request asking to switch protocols (h2c, websocket): answered as plain
            # HTTP/1.1, which the client must accept; the connection ends after it
            if self.queue:
                self.queue[-1].keep_alive = False
            self.pause_reading()
        except httptools.HttpParserError as exc:
            self._bad_request(str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.task is not None and self.queue and not self.queue[0].started:
            # the client hung up while its request waited or ran: stop it, freeing the
            # queue place or the replica, since nobody will read the answer
            self.task.cancel()
        self.server.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        for exchange in self.queue:
            exchange._wake()
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url, self._headers = b"", []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        exchange = Exchange(
            self,
            parser.get_method().decode("ascii"),
            self._url.decode("utf-8", "surrogateescape"),
            parser.get_http_version(),
            self._headers,
            parser.should_keep_alive(),
        )
        self.parsing = exchange
        self.queue.append(exchange)
        if len(self.queue) > MAX_PIPELINED:
            self.pause_reading()
        if self.task is None:
            if self.idle_timer is not None:
                self.idle_timer.cancel()
            self.task = self.loop.create_task(self._serve())

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing._feed(body)

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.parsing._arrived()
            self.parsing = None

    # -- serving -----------------------------------------------------------------------

    async def _serve(self) -> None:
        server = self.server
        while self.queue and not self.lost:
            exchange = self.queue[0]
            server.active += 1
            try:
                if not exchange.target.startswith("/"):
                    error_response(exchange, 400, "the request target must be a path")
                else:
                    await server.handler(exchange)
            except asyncio.CancelledError:
                if not self.lost:  # the server is closing
                    raise
            except Exception:
                log.exception("handler failed")
            finally:
                server.active -= 1
            if not exchange.finished:  # the handler failed: answer for it, or cut it off
                if exchange.started:
                    exchange.abort()
                else:
                    exchange.keep_alive = False
                    error_response(exchange, 500, "internal error")
            self.queue.popleft()
            self.resume_reading()
            if server.active == 0:
                server.wake_drain()
        self.task = None
        if self.lost:
            return
        if self.malformed:
            self._refuse()
        elif server.closing:
            self.close()
        else:
            self._idle()

    def _bad_request(self, reason: str) -> None:
        """Answer what was well-formed first, then say why, then close."""
        self.malformed = reason
        self.pause_reading()
        if self.parsing is not None:  # the error is in this request's body: its reader
            self.parsing._wake()  # gets BadRequest, and its answer ends the connection
            self.parsing = None
            self.owes_400 = False
        if self.task is None:
            self._refuse()

    def _refuse(self) -> None:
        if not self.owes_400:
            self.close()
            return
        body = orjson.dumps({"error": f"malformed request: {self.malformed}", "status": 400})
        self.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        self.close()

    # -- I/O helpers -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    async def drained(self) -> None:
        if self.writing_paused and not self.lost:
            self.drain = self.loop.create_future()
            await self.drain

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.lost:
            self.transport.pause_reading()
            self.reading_paused = True

    def resume_reading(self) -> None:
        if self.reading_paused and len(self.queue) <= MAX_PIPELINED and not self.lost:
            assert self.transport is not None
            self.transport.resume_reading()
            self.reading_paused = False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # after what is buffered has been written

    def _idle(self) -> None:
        self.idle_timer = self.loop.call_later(IDLE_TIMEOUT_S, self.close)


class HttpServer:
    """Listens on one address; ``close`` stops accepting, lets open requests finish
    (bounded), then closes every connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: set[_Connection] = set()
        self.active = 0  # requests being answered
        self.closing = False
        self._server: asyncio.base_events.Server | None = None
        self._drained: asyncio.Event | None = None

    async def start(self, host: str, port: int) -> int:
        """Starts listening; returns the bound port (``port`` may be 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=1024, reuse_address=True
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def close(self, drain_s: float) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()  # idle keep-alive: nothing to finish
        if self.active:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), drain_s)
            except TimeoutError:
                log.warning("drain timeout: closing %d open requests", self.active)
        for conn in list(self.connections):
            if conn.task is not None:
                conn.task.cancel()
            if conn.transport is not None:
                conn.transport.abort()

    def wake_drain(self) -> None:
        if self._drained is not None:
            self._drained.set()


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The ``Date`` header's value, formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def json_response(
    exchange: Exchange, status: int, body: object, headers: list[tuple[str, str]] | None = None
) -> None:
    """An answer the gateway writes itself."""
    base = [("Content-Type", "application/json"), ("Date", http_date())]
    exchange.respond(status, base + (headers or []), orjson.dumps(body))


def error_response(
    exchange: Exchange, status: int, message: str, headers: list[tuple[str, str]] | None = None
) -> None:
    json_response(exchange, status, {"error": message, "status": status}, headers)
