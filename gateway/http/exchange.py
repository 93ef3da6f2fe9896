"""One request and its answer, as the handler sees them (``Exchange``).

The body is read on demand: ``100 Continue`` goes out when the client asked for it, and
the connection stops reading while nobody takes the body, so a large one is pulled in
only as fast as it is consumed; the bodies held across all clients are bounded (503). An
answer goes out whole in one write, or streamed with its known length or chunked framing,
the streamer waiting for the socket to drain above the high-water mark, so that a slow
client slows the replica's stream rather than growing the gateway's memory. An answer
sent before its request body was read to the end closes the connection: the bytes left on
it cannot be told apart from the next request.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

import orjson

from gateway.http import wire

if TYPE_CHECKING:
    from gateway.http.connection import Connection

REASONS = {s.value: s.phrase for s in HTTPStatus}
NO_BODY_STATUS = frozenset({204, 304})


class BadRequest(Exception):
    """The request body's framing is malformed."""


class BodyTimeout(Exception):
    """The client stopped sending its request body."""


class BodyBufferFull(Exception):
    """The request bodies held across all clients reached ``max_buffered_body_bytes``."""


class Exchange:
    """One request and the answer to it. The handler reads the request's fields and body
    and answers once: ``respond`` with a whole body, or ``start``, ``write``\\* and ``end``
    for a stream (``abort`` cuts a stream off)."""

    __slots__ = (
        "_bodiless",
        "_chunked",
        "_conn",
        "_first",
        "_more",
        "_over",
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
        "transfer_encoding",
        "version",
    )

    def __init__(
        self,
        conn: Connection,
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
        self.transfer_encoding = ""  # its codings, all fields joined
        self.expect_continue = False
        for name, value in headers:  # the few the server itself acts on
            low = name.lower()
            if low == "content-length":
                self.content_length = wire.content_length(value)  # ValueError: a 400
            elif low == "transfer-encoding":
                te = self.transfer_encoding
                self.transfer_encoding = f"{te}, {value}" if te else value
            elif low == "expect":
                self.expect_continue = value.lower() == "100-continue" and version == "1.1"
        self.complete = False  # the whole request body has arrived
        self.started = False  # the answer's head went out
        self.finished = False
        self._first = b""  # the body as it arrived in one piece, as most do ...
        self._more: bytearray | None = None  # ... or in several: one buffer, not a list
        self._size = 0  # of the body so far: counted in the server's buffered bytes
        self._over = False  # the server's body buffer was full when a piece came
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
        server = conn.server
        expected = (self.content_length or 0) - self._size
        if self._over or server.body_bytes + expected > server.limits.max_buffered_body_bytes:
            server.recorder.client_refused("body_buffer")
            raise BodyBufferFull("the gateway holds as many request bodies as it may")
        if self.expect_continue and not self.complete:
            self.expect_continue = False
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self.complete:
            if self._size > limit:
                return None
            if conn.refusal is not None:  # its framing, or its trailers, went wrong
                raise BadRequest(conn.malformed or conn.refusal[1])
            if self._over:
                server.recorder.client_refused("body_buffer")
                raise BodyBufferFull("the gateway holds as many request bodies as it may")
            if conn.lost:
                raise ConnectionResetError("the client closed the connection")
            self._waiter = conn.loop.create_future()
            conn.resume_reading()
            timeout_s = server.limits.body_timeout_s
            try:
                async with asyncio.timeout(timeout_s):  # off the hot path: rare wait
                    await self._waiter
            except TimeoutError:
                server.recorder.client_refused("body_timeout")
                raise BodyTimeout(f"no body bytes for {timeout_s:g} s") from None
            finally:
                self._waiter = None
        if self._size > limit:
            return None
        return self._first if self._more is None else bytes(self._more)

    def _feed(self, data: bytes) -> None:
        if self.finished:  # answered before its body was read: the connection closes
            return
        if self._more is not None:
            self._more += data
        elif self._size:  # a second piece: from here on, one growing buffer
            self._more = bytearray(self._first)
            self._more += data
            self._first = b""
        else:
            self._first = data
        self._size += len(data)
        server = self._conn.server
        server.body_bytes += len(data)
        if server.body_bytes > server.limits.max_buffered_body_bytes:
            self._over = True
            self._conn.pause_reading()
        if self._waiter is not None:
            if not self._waiter.done():
                self._waiter.set_result(None)
        elif self._size > wire.HIGH_WATER:
            self._conn.pause_reading()  # nobody is reading it yet: hold the client back

    def _release(self) -> None:
        """The exchange is over: its body no longer counts against the server's buffer."""
        self._conn.server.body_bytes -= self._size
        self._size = 0
        self._first, self._more = b"", None

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

    def send(self, data: bytes) -> None:
        """Write a piece of a started answer; ``stalled`` says whether to wait (``drained``)
        before the next, the client's socket being full."""
        conn = self._conn
        if conn.lost:
            raise ConnectionResetError("the client closed the connection")
        if self._bodiless:
            return
        if self._chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.write(data)

    @property
    def stalled(self) -> bool:
        return self._conn.writing_paused and not self._conn.lost

    async def drained(self) -> None:
        await self._conn.drained()

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
        framing = []
        if status in NO_BODY_STATUS:
            pass
        elif self._chunked:
            framing.append("Transfer-Encoding: chunked\r\n")
        elif length is not None:
            framing.append(f"Content-Length: {length}\r\n")
        if not self.keep_alive:
            framing.append("Connection: close\r\n")
        elif self.version == "1.0":
            framing.append("Connection: keep-alive\r\n")
        start = f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
        return wire.head(start, headers, *framing)

    def _finish(self) -> None:
        self.finished = True
        if not self.keep_alive:
            if self.complete:
                self._conn.close()
            else:  # answered before the body was read: the client may still be sending
                self._conn.linger()


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
