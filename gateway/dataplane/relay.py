"""Passing a replica's response through to the client, and what it carried.

A response up to ``BUFFER_LIMIT`` bytes with a known length goes out in one write; any
other is streamed chunk by chunk as the replica produces it (SSE, chunked), never
buffered. An event stream's tokens are read on the way (``tokens.EventStream``); a whole
answer's from its ``usage`` when the caller asks (completions). Nothing here retries or
touches the pool: the proxy owns the slot and learns from the outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.dataplane.tokens import EventStream, Tokens, whole_answer
from gateway.http.client import UpstreamError, UpstreamResponse
from gateway.http.exchange import Exchange, error_response

CLIENT_CLOSED = 499  # nginx's status for a client that left before its answer was complete
BUFFER_LIMIT = 64 * 1024  # responses up to this size with a known length go out in one write


@dataclass(slots=True)
class Relayed:
    status: int  # what the client got: the replica's, 499 (it left), 502 (the replica broke)
    replica_ok: bool  # False: the replica's response broke off, which counts against it
    tokens: Tokens | None = None  # None: not an answer whose tokens are counted


async def relay(
    exchange: Exchange,
    upstream: UpstreamResponse,
    headers: list[tuple[str, str]],
    tag: list[tuple[str, str]],
    clock: Callable[[], float],
    stream: EventStream | None,
    count_whole: bool,
    parked: Callable[[bool], None],
) -> Relayed:
    """Send ``upstream`` to the client with ``headers``; ``tag`` (the request id) goes
    on whatever the client gets, a 502 of the gateway's own included. ``stream``: the reader of an
    event stream's tokens; ``count_whole``: take a buffered answer's ``usage``; ``parked``
    told True while the client's socket is full (its replica waits for the client), then
    False."""
    length = upstream.content_length
    headers = headers + tag
    if length is not None and length <= BUFFER_LIMIT and exchange.method != "HEAD":
        try:
            data = await upstream.read()
        except (UpstreamError, TimeoutError):
            error_response(exchange, 502, "upstream failed: broken response", tag)
            return Relayed(502, False)
        exchange.respond(upstream.status, headers, data)
        status = CLIENT_CLOSED if exchange.client_gone else upstream.status
        return Relayed(status, True, whole_answer(data) if count_whole else None)
    exchange.start(upstream.status, headers, length)
    tokens = None if stream is None else stream.tokens
    while True:
        try:
            chunk = await upstream.readany()
        except (UpstreamError, TimeoutError):
            exchange.abort()  # the client sees a cut-off body, never a clean end
            return Relayed(502, False, tokens)
        if not chunk:
            break
        if stream is not None:
            stream.feed(chunk, clock())
        try:
            exchange.send(chunk)
        except ConnectionResetError:  # the client went away: not the replica's fault
            exchange.abort()
            return Relayed(CLIENT_CLOSED, True, tokens)
        if exchange.stalled:  # the client reads slower than the replica sends
            parked(True)
            try:
                await exchange.drained()
            finally:
                parked(False)
    exchange.end()
    return Relayed(upstream.status, True, tokens)
