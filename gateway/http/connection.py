"""One client connection: llhttp (httptools) parses its requests, answered in order.

A request is handed over once its head has arrived, so a 404 or a 413 does not wait for
the body. A client that hangs up before its answer began has its request cancelled,
freeing the queue place or the replica. A malformed request gets 400 and the connection
closes, lingering so that the answer is not lost to a reset. Deadlines are read by the
server's sweep (``expire``), never by a timer per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools
import orjson

from gateway.http import wire
from gateway.http.exchange import REASONS, Exchange, error_response

if TYPE_CHECKING:
    from gateway.http.server import HttpServer, Limits

log = logging.getLogger(__name__)

LINGER_S = 2.0  # how long a refused client's further input is read and dropped
COSTLY_PIECES = 256  # body pieces (chunks) in one read past which the connection waits a turn
TURN, REFUSED = "turn", "refused"  # why reading stops, besides wire.BEHIND


class Connection(asyncio.Protocol):
    """Deadlines the sweep reads: ``head_since`` while a request head is arriving (from
    the accept for the first one), ``idle_since`` while no request is open,
    ``stalled_since`` while the client reads nothing of its answer."""

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
        self.reading = wire.ReadGate()  # causes: wire.BEHIND, TURN, REFUSED
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
        self.transport = self.reading.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=wire.HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else ""
        refused = self.server.admit(self)
        if refused:
            self.reading.hold(REFUSED)
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
        self.reading.transport = None
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
        if not self.reading.causes:
            self.reading.hold(TURN)
            self.loop.call_later(cost_s, self.reading.release, TURN)

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
            wire.BEHIND in self.reading.causes
            and self.queue
            and not self.queue[0].started
            and wire.peer_closed(self.transport)  # a hang-up the paused transport cannot see
        ):
            self.transport.abort()

    # -- I/O helpers -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    async def drained(self) -> None:
        if self.writing_paused and not self.lost:
            self.drain = self.loop.create_future()
            await self.drain

    def pause_reading(self) -> None:
        self.reading.hold(wire.BEHIND)

    def resume_reading(self) -> None:
        if self.refusal is None and len(self.queue) <= self.server.limits.max_pipelined:
            self.reading.release(wire.BEHIND)

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
        self.reading.open()


class _Stopped(Exception):
    """Raised from a parser callback to stop parsing at once (the refusal is set)."""
