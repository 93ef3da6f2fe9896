"""The client listener: HTTP/1.1 on asyncio protocols, parsed by llhttp (httptools).

Why not aiohttp's server: with the upstream side on its own client, profiles of the
gateway put aiohttp's server machinery (request objects, the StreamResponse state
machine, separate writes for head and body) at the top of what was left. The proxy needs
a narrow server, and this is it:

* a request is handed to the handler as soon as its head has arrived, so a 404 or a 413
  does not wait for the body; the body is read on demand, with ``100 Continue`` sent when
  the client asked for it, and the socket is paused while nobody reads, so a large body
  is pulled in only as fast as it is consumed;
* requests on one connection are answered in order (pipelined ones wait their turn); a
  client that hangs up before its answer began has its request cancelled, so a queue
  place or a replica is not kept busy for an answer nobody will read;
* a complete answer goes out in one write; a streamed one carries its known length or
  chunked framing and waits for the socket to drain above a high-water mark, so a slow
  client slows the replica's stream rather than growing the gateway's memory;
* a malformed request gets 400 and the connection closes; so does a connection whose
  answer went out before its request body was read to the end, since the bytes left on
  it cannot be told apart from the next request;
* every resource a client can hold is bounded (``Limits``; ``config.ClientLimits``): the request
  line (414), the header block and its field count (431), the time to send a head (408),
  a pause mid-body, the time a client may read nothing while its answer waits (then the
  connection is aborted and the replica's slot freed), pipelined requests, the request
  bodies held across all clients (503), and connections, in all and per address (at the
  cap the longest-idle keep-alive connection makes room, else 503). Timeouts are
  enforced by one sweep over the connections a few times a second rather than by a
  timer per request, so they cost the hot path a clock read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol, cast

import httptools
import orjson

from gateway.http import wire

log = logging.getLogger(__name__)

SWEEP_S = 1.0  # the longest pause between two sweeps for expired connections
LINGER_S = 2.0  # how long a refused client's further input is read and dropped
COSTLY_PIECES = 256  # body pieces (chunks) in one read past which the connection waits a turn
REASONS = {s.value: s.phrase for s in HTTPStatus}
NO_BODY_STATUS = frozenset({204, 304})

Handler = Callable[["Exchange"], Awaitable[None]]


class Limits(Protocol):
    """What one client may cost; the listener reads them on each use, so they may be
    replaced while it runs (``config.ClientLimits`` is one, with its defaults)."""

    @property
    def max_request_line_bytes(self) -> int: ...
    @property
    def max_header_bytes(self) -> int: ...
    @property
    def max_header_fields(self) -> int: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def max_connections_per_ip(self) -> int: ...
    @property
    def max_pipelined(self) -> int: ...
    @property
    def max_buffered_body_bytes(self) -> int: ...
    @property
    def header_timeout_s(self) -> float: ...
    @property
    def body_timeout_s(self) -> float: ...
    @property
    def write_timeout_s(self) -> float: ...
    @property
    def idle_timeout_s(self) -> float: ...


class Refusals(Protocol):
    """Where each refusal is counted, by reason (the gateway's ``Recorder`` is one)."""

    def client_refused(self, reason: str) -> None: ...


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
        self.transfer_encoding = ""  # its codings, all fields joined
        self.expect_continue = False
        for name, value in headers:  # the few the server itself acts on
            low = name.lower()
            if low == "content-length":
                self.content_length = int(value) if value.isdigit() else None
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


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler on each in turn.

    Deadlines are read by the server's sweep (``expire``): ``head_since`` while a request
    head is arriving (from the accept for the first one), ``idle_since`` while no
    request is open, ``stalled_since`` while the client reads nothing of its answer."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.counted = False  # in the server's connection counts
        self.lost = False
        self.queue: deque[Exchange] = deque()  # parsed, not yet answered; [0] is current
        self.parsing: Exchange | None = None  # the one whose body is arriving
        self.task: asyncio.Task[None] | None = None
        self.reading_paused = False  # by flow control: nobody takes what it sends
        self.waiting_turn = False  # stopped until the loop's next turn (``_wait_turn``)
        self.drain: asyncio.Future[None] | None = None
        self.writing_paused = False
        self.malformed = ""  # why the connection's input stopped making sense
        self.refusal: tuple[int, str] | None = None  # the last answer, once input stopped
        self.owes_answer = True  # no request has answered for the refusal's cause yet
        self.head_since: float | None = self.loop.time()
        self.idle_since = self.head_since
        self.stalled_since = 0.0
        self.lingering_since: float | None = None
        self.received = False  # any byte yet: a connection that sent none is the cheapest to drop
        self._head_size = 0  # bytes of request line and header fields seen so far
        self._head_raw = 0  # bytes of the chunks fed while the head was incomplete
        self._head_began = False  # a head began in the chunk being fed
        self._url = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._pieces: list[bytes] = []  # body bytes parsed in this read, not handed over
        self._read_at = 0.0  # when the read being parsed began

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.set_write_buffer_limits(high=wire.HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else ""
        refused = self.server.admit(self)
        if refused:
            self.transport.pause_reading()
            self.refusal = (503, "too many connections")
            self.server.recorder.client_refused(refused)
            self._refuse(linger=False)  # it has sent nothing yet: a plain close is clean

    def data_received(self, data: bytes) -> None:
        if self.lingering_since is not None:
            return  # refused: what still comes is dropped
        self.received = True
        self._head_began = False
        self._read_at = time.perf_counter()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # a request asking to switch protocols (h2c, websocket): answered as plain
            # HTTP/1.1, which the client must accept; the connection ends after it
            if self.queue:
                upgrading = self.queue[-1]
                upgrading.keep_alive = False
                if upgrading.content_length or upgrading.transfer_encoding:
                    # llhttp stops at the head, so its body would be lost: refused,
                    # by its own reader (a BadRequest), never forwarded without it
                    upgrading.complete = False
                    self.malformed = "a request offering an upgrade may not have a body"
                    self._stop(400, self.malformed, "malformed")
                    self.owes_answer = False
            self.pause_reading()
        except httptools.HttpParserError as exc:
            self._pieces.clear()
            if self.refusal is None:  # else a callback stopped the parser on purpose
                self.malformed = str(exc)
                self._stop(400, f"malformed request: {exc}", "malformed")
            return
        self._hand_over()
        if self.head_since is not None and not self._head_began:
            # one head arrived before, through and after this chunk: all of it is head,
            # which llhttp holds in pieces until a header is whole: bound them here too
            self._head_raw += len(data)
            limits = self.server.limits
            if self._head_raw > limits.max_request_line_bytes + limits.max_header_bytes:
                self._stop(431, "request header fields too large", "header_size")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.task is not None and self.queue and not self.queue[0].started:
            # the client hung up while its request waited or ran: stop it, freeing the
            # queue place or the replica, since nobody will read the answer
            self.task.cancel()
        self.server.forget(self)
        for exchange in self.queue:
            exchange._wake()
        if self.task is None:
            self._release_queue()
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.stalled_since = self.loop.time()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url, self._headers = bytearray(), []
        self._head_size = self._head_raw = 0
        self._head_began = True
        if self.head_since is None:
            self.head_since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.limits.max_request_line_bytes:
            self._stop(414, "request target too long", "request_line")
            raise _Stopped

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.server.limits
        self._head_size += len(name) + len(value) + 4
        if self._head_size > limits.max_header_bytes:
            self._stop(431, "request header fields too large", "header_size")
            raise _Stopped
        if self.parsing is not None:
            return  # a trailer of a chunked body: never forwarded, as a header would be
        if len(self._headers) >= limits.max_header_fields:
            self._stop(431, "too many request header fields", "header_fields")
            raise _Stopped
        self._headers.append(wire.field(name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        exchange = Exchange(
            self,
            parser.get_method().decode("ascii"),
            wire.text(self._url),
            parser.get_http_version(),
            self._headers,
            parser.should_keep_alive(),
        )
        if exchange.version not in ("1.0", "1.1"):  # llhttp parses any d.d
            self._stop(505, f"HTTP/{exchange.version} is not supported", "malformed")
            raise _Stopped
        codings = exchange.transfer_encoding
        if codings and (exchange.version == "1.0" or codings.lower().strip() != "chunked"):
            # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing
            # (a 1.0 hop before us may have framed it otherwise); a coding before chunked
            # would reach the replica undone, under a Content-Length, unannounced
            if exchange.version == "1.0":
                self._stop(400, "Transfer-Encoding in an HTTP/1.0 request", "malformed")
            else:
                self._stop(501, "transfer codings other than chunked", "transfer_coding")
            raise _Stopped
        self.head_since = None
        self._head_size = 0  # from here on, what comes is the trailers' share
        self.parsing = exchange
        self.queue.append(exchange)
        if len(self.queue) > self.server.limits.max_pipelined:
            self.pause_reading()
        if self.task is None:
            self.task = self.loop.create_task(self._serve())

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)  # handed over once per read: chunks may be tiny

    def on_message_complete(self) -> None:
        self._hand_over()
        if self.parsing is not None:
            self.parsing._arrived()
            self.parsing = None

    def _hand_over(self) -> None:
        """Give the body pieces parsed so far to their exchange, in one piece: a body
        of a million 2-byte chunks costs one exchange call per read, not per chunk."""
        pieces = self._pieces
        if pieces:
            if self.parsing is not None:
                self.parsing._feed(pieces[0] if len(pieces) == 1 else b"".join(pieces))
            if len(pieces) > COSTLY_PIECES:
                self._wait_turn(time.perf_counter() - self._read_at)
            pieces.clear()

    def _wait_turn(self, cost_s: float) -> None:
        """Read nothing more for as long as the last read cost to parse. The event loop
        reads a readable socket up to 32 times per turn (libuv): 2 MB of 2-byte chunks
        cost the parser about 125 ms, which every other client waited through (a normal
        client's p99 went from 14 to 353 ms); with a pause as long as each costly read,
        such a client has at most about half of the loop."""
        if self.transport is not None and not self.reading_paused and not self.waiting_turn:
            self.transport.pause_reading()
            self.waiting_turn = True
            self.loop.call_later(cost_s, self._next_turn)

    def _next_turn(self) -> None:
        self.waiting_turn = False
        if self.transport is not None and not self.reading_paused and not self.lost:
            self.transport.resume_reading()

    # -- serving -----------------------------------------------------------------------

    async def _serve(self) -> None:
        server = self.server
        while self.queue and not self.lost:
            exchange = self.queue[0]
            server.active += 1
            try:
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
            exchange._release()
            if server.active == 0:
                server.wake_drain()
            if self.writing_paused:
                # the next pipelined answer waits for this one to leave: a client that
                # pipelines and never reads grows no buffer, and the sweep cuts it off
                await self.drained()
            self.resume_reading()
        self.task = None
        if self.lost:
            self._release_queue()
            return
        if self.refusal is not None:
            self._refuse()
        elif server.closing:
            self.close()
        else:
            self.idle_since = self.loop.time()

    def _stop(self, status: int, message: str, reason: str) -> None:
        """Stop reading: what was well-formed is answered first, then ``status`` with
        ``message``, then the connection closes. ``reason`` is what the metric counts."""
        if self.refusal is not None:
            return
        self.server.recorder.client_refused(reason)
        self.refusal = (status, message)
        self.pause_reading()
        if self.parsing is not None:  # the error is in this request's body: its reader
            self.parsing._wake()  # gets BadRequest, and its answer ends the connection
            self.parsing = None
            self.owes_answer = False
        if self.task is None:
            self._refuse()

    def _refuse(self, linger: bool = True) -> None:
        if not self.owes_answer or self.refusal is None:
            self.linger()
            return
        status, message = self.refusal
        body = orjson.dumps({"error": message, "status": status})
        self.write(
            b"HTTP/1.1 %d %b\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%b"
            % (status, REASONS.get(status, "Error").encode(), len(body), body)
        )
        if linger:
            self.linger()
        else:
            self.close()

    def _release_queue(self) -> None:
        for exchange in self.queue:
            exchange._release()
        self.queue.clear()

    def expire(self, now: float, limits: Limits) -> None:
        """Let the connection go if it has outlived a deadline (the server's sweep)."""
        if self.lost or self.transport is None:
            return
        if self.lingering_since is not None:
            if now - self.lingering_since >= LINGER_S:
                self.close()
        elif self.writing_paused and now - self.stalled_since >= limits.write_timeout_s:
            # the client reads nothing of its answer: abort, so that its request ends
            # and gives its replica's slot back (a clean close would wait for the buffer)
            self.server.recorder.client_refused("write_timeout")
            self.transport.abort()
        elif self.head_since is not None and now - self.head_since >= limits.header_timeout_s:
            if self.task is None and not self._url:
                self.server.recorder.client_refused("header_timeout")
                self.close()  # it sent nothing: nobody to tell
            else:
                self._stop(408, "request head not complete in time", "header_timeout")
        elif (
            self.task is None
            and self.head_since is None
            and now - self.idle_since >= limits.idle_timeout_s
        ):
            self.close()
        elif (
            self.reading_paused
            and self.queue
            and not self.queue[0].started
            and self._peer_closed()  # a hang-up the paused transport cannot see
        ):
            self.transport.abort()

    def _peer_closed(self) -> bool:
        """Has the client closed its side with nothing unread before the end? A peek,
        since with reading paused (pipelined requests queued, a body nobody reads yet)
        the loop does not read the end, and a request whose client left would hold its
        replica's slot until the answer. An end behind unread bytes stays unseen."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        with socket.socket(fileno=os.dup(sock.fileno())) as peek:
            try:
                return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True  # reset

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
            if not self.waiting_turn:
                self.transport.pause_reading()
            self.reading_paused = True

    def resume_reading(self) -> None:
        if (
            self.reading_paused
            and self.refusal is None
            and len(self.queue) <= self.server.limits.max_pipelined
            and not self.lost
        ):
            assert self.transport is not None
            if not self.waiting_turn:  # else the next turn resumes it
                self.transport.resume_reading()
            self.reading_paused = False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # after what is buffered has been written

    def linger(self) -> None:
        """Close a connection whose client may still be sending: half-close, then read
        and drop its input for ``LINGER_S``. Closing with input unread would reset the
        connection, and the client could lose the answer just written (nginx's
        ``lingering_close`` for the same reason)."""
        transport = self.transport
        if transport is None or self.lost or self.lingering_since is not None:
            return
        if not transport.can_write_eof():
            self.close()
            return
        self.lingering_since = self.loop.time()
        transport.write_eof()
        transport.resume_reading()
        self.reading_paused = False


class _Stopped(Exception):
    """Raised from a parser callback to stop parsing at once (the refusal is set)."""


class HttpServer:
    """Listens on one address; ``close`` stops accepting, lets open requests finish
    (bounded), then closes every connection. ``limits`` may be replaced while it runs
    (a reload); they apply to what happens next."""

    def __init__(self, handler: Handler, limits: Limits, recorder: Refusals) -> None:
        self.handler = handler
        self.limits = limits
        self.recorder = recorder
        self.connections: set[_Connection] = set()
        self.per_address: dict[str, int] = {}
        self.active = 0  # requests being answered
        self.body_bytes = 0  # request body bytes held, across all connections
        self.closing = False
        self._server: asyncio.base_events.Server | None = None
        self._drained: asyncio.Event | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Starts listening; returns the bound port (``port`` may be 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=1024, reuse_address=True
        )
        self._sweeper = loop.create_task(self._sweep())
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def admit(self, conn: _Connection) -> str:
        """Count a new connection in, or say why not ("" when admitted). At the cap the
        keep-alive connection idle the longest is closed to make room: idle ones are
        the cheapest to lose, and a flood of them must not lock new clients out."""
        limits = self.limits
        if len(self.connections) >= limits.max_connections and not self._close_longest_idle():
            return "connections"
        per_address = self.per_address.get(conn.remote, 0)
        if limits.max_connections_per_ip and per_address >= limits.max_connections_per_ip:
            return "connections_per_ip"
        self.connections.add(conn)
        self.per_address[conn.remote] = per_address + 1
        conn.counted = True
        return ""

    def forget(self, conn: _Connection) -> None:
        if not conn.counted:
            return
        conn.counted = False
        self.connections.discard(conn)
        left = self.per_address[conn.remote] - 1
        if left:
            self.per_address[conn.remote] = left
        else:
            del self.per_address[conn.remote]

    def _close_longest_idle(self) -> bool:
        idle = [
            c
            for c in self.connections
            if c.task is None
            and c.lingering_since is None
            and (c.head_since is None or not c.received)
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since)
        self.forget(oldest)  # now, not when its close completes: the newcomer takes its place
        oldest.close()
        return True

    async def _sweep(self) -> None:
        """Let connections go past their deadlines, a few times per shortest timeout."""
        loop = asyncio.get_running_loop()
        while True:
            limits = self.limits
            shortest = min(limits.header_timeout_s, limits.write_timeout_s, limits.idle_timeout_s)
            await asyncio.sleep(min(SWEEP_S, shortest / 4))
            now = loop.time()
            for conn in list(self.connections):
                conn.expire(now, limits)

    async def close(self, drain_s: float) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
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


def raise_open_files_limit() -> int:
    """Raise this process's descriptor limit to its hard limit, so that
    ``max_connections`` rather than a low default decides who is turned away; returns
    the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            log.warning("could not raise the open-files limit from %d to %d", soft, hard)
    return soft


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
