"""HTTP/1.1 as both ends of the gateway write and read it: a message head's bytes, a
header field's text, how much one side buffers before it applies backpressure, when a
peer is read, and whether a peer that is not being read has hung up.

Text is carried as UTF-8 with surrogate escapes both ways, so a header value or target
that is not valid UTF-8 reaches the other side byte for byte; header names are Latin-1
(llhttp admits only token characters in them).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterable

# Bytes one side holds before it pushes back: a response stream waits on a client's
# write buffer above it, a request body not yet read pauses the client, and a replica's
# body not yet relayed pauses the replica.
HIGH_WATER = 256 * 1024
BEHIND = "behind"  # a ReadGate cause: what the peer sent waits for a taker


class ReadGate:
    """Why a peer is not being read: its transport reads again only once no cause is
    left. A side may hold its peer for more than one cause at once (what it sent waits
    for a taker, a costly read waits its turn), and the end of one cause must not resume
    reading that another still holds. Without a transport (none yet, or lost) causes
    are only recorded."""

    __slots__ = ("causes", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.causes: set[str] = set()

    def hold(self, cause: str) -> None:
        if not self.causes and self.transport is not None:
            self.transport.pause_reading()
        self.causes.add(cause)

    def release(self, cause: str) -> None:
        if cause in self.causes:
            self.causes.remove(cause)
            if not self.causes and self.transport is not None:
                self.transport.resume_reading()

    def open(self) -> None:
        """Read again, whatever held the peer."""
        if self.causes:
            self.causes.clear()
            if self.transport is not None:
                self.transport.resume_reading()


def head(start_line: str, headers: Iterable[tuple[str, str]], *framing: str) -> bytes:
    """A message head: its start line, its header fields, then ``framing`` (fields the
    gateway sets itself, such as Content-Length), each already ending in CRLF."""
    lines = [start_line]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.extend(framing)
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def field(name: bytes, value: bytes) -> tuple[str, str]:
    """A header field as text, as the parser handed it over."""
    return name.decode("latin-1"), value.decode("utf-8", "surrogateescape")


MAX_LENGTH_DIGITS = 18  # a longer Content-Length is no real body's, leading zeros counted


def content_length(value: str) -> int:
    """A Content-Length as llhttp let it through: ASCII digits whose value fits 64 bits
    (it refuses more, and a second field), then the optional whitespace RFC 9110 allows,
    which a test for digits alone would take for no length at all. Leading zeros are
    not bounded by llhttp: ValueError past ``MAX_LENGTH_DIGITS`` digits (``int`` itself
    refuses over 4300)."""
    digits = value.rstrip(" \t")
    if len(digits) > MAX_LENGTH_DIGITS:
        raise ValueError(f"a {len(digits)}-digit Content-Length")
    return int(digits)


def text(raw: bytes | bytearray) -> str:
    """A request target as text."""
    return raw.decode("utf-8", "surrogateescape")


TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)  # Linux
PEER_GONE = frozenset({7, 8})  # tcp_info's first byte: TCP_CLOSE (a reset), TCP_CLOSE_WAIT


def peer_closed(transport: asyncio.Transport) -> bool:
    """Has the peer closed its side (its FIN came, or a reset)? Asked while reading is
    paused (pipelined requests queued, a body nobody reads yet): the loop does not read
    the end, and a request whose client left would hold its replica's slot until the
    answer. TCP's own state says so even behind unread bytes (CLOSE_WAIT once the FIN
    is in, CLOSE after a reset: Linux's ``TCP_INFO``); elsewhere a peek sees an end only
    with nothing unread before it."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    with socket.socket(fileno=os.dup(sock.fileno())) as peer:
        try:
            if TCP_INFO is not None and peer.family in (socket.AF_INET, socket.AF_INET6):
                return peer.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 1)[0] in PEER_GONE
            return peer.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True  # reset
