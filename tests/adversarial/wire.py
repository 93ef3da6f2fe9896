"""Both ends of the wire, strict: a replica that records the exact bytes it receives, and
a client-side reader of the gateway's answers.

The replica is a raw asyncio TCP server on 127.0.0.1 (no HTTP library between it and the
socket) with a small parser of its own that is stricter than any server a gateway may
sit in front of: it notes every framing or syntax liberty the gateway takes (a second
Content-Length, any Transfer-Encoding, obs-fold, a bare CR or LF, a NUL, a field name
that is not a token, whitespace before a colon, a version other than HTTP/1.1) in the
request's ``problems``, and what it cannot frame at all in ``unframed``. It answers each
request at once (or after ``X-Delay-Ms``) with a digest of what it got: method, target,
body length and SHA-256, and the ``X-Token`` it was sent, in headers and in a JSON body,
so the client can check that the answer is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import socket
import struct
from dataclasses import dataclass, field

import orjson

TOKEN_CHARS = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2 token
CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")  # neither HTAB nor a line end
READ_TIMEOUT_S = 2.0  # an answer from a replica on loopback takes milliseconds


def digest(method: str, target: str, body: bytes) -> dict[str, object]:
    return {
        "method": method,
        "target": target,
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


@dataclass
class Forwarded:
    """One request as the replica read it off the wire."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes
    problems: list[str] = field(default_factory=list)

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def token(self) -> str | None:
        values = self.header_values("x-token")
        return values[0] if len(values) == 1 else None


class RecordingReplica:
    """The replica: every request it read is appended to ``requests`` (its head as the
    exact bytes that came, its body as the bytes its one Content-Length framed); bytes it
    could not frame as a request are kept in ``unframed``, and their connection closed."""

    def __init__(self) -> None:
        self.requests: list[Forwarded] = []
        self.unframed: list[bytes] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> RecordingReplica:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def with_token(self, token: str) -> list[Forwarded]:
        return [r for r in self.requests if r.token == token]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        try:
            while (request := await self._read_request(reader, buffer)) is not None:
                self.requests.append(request)
                if request.problems:
                    return  # framed wrongly, maybe: what follows cannot be trusted
                delay = request.header_values("x-delay-ms")
                if delay and delay[0].isdigit():
                    await asyncio.sleep(int(delay[0]) / 1000)
                writer.write(self._answer(request))
                await writer.drain()
            if buffer:
                self.unframed.append(bytes(buffer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _fill(reader: asyncio.StreamReader, buffer: bytearray) -> bool:
        data = await reader.read(65536)
        buffer += data
        return bool(data)

    async def _read_request(
        self, reader: asyncio.StreamReader, buffer: bytearray
    ) -> Forwarded | None:
        """The next request on the connection; None at its end, or (what is left is then
        in ``buffer``) when the bytes are no request."""
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if not await self._fill(reader, buffer):
                return None
        head = bytes(buffer[: end + 4])
        request = parse_head(head)
        if request is None:
            return None
        del buffer[: end + 4]
        if request.problems:  # e.g. Transfer-Encoding: no body is read
            return request
        lengths = request.header_values("content-length")
        size = int(lengths[0]) if lengths else 0
        while len(buffer) < size:
            if not await self._fill(reader, buffer):
                request.problems.append("connection closed inside the body")
                return request
        request.body = bytes(buffer[:size])
        del buffer[:size]
        return request

    @staticmethod
    def _answer(request: Forwarded) -> bytes:
        echo = digest(request.method, request.target, request.body)
        token = request.token or ""
        echo["token"] = token
        body = orjson.dumps(echo)
        head = (
            "HTTP/1.1 200 OK\r\n"
            "Content-Type: application/json\r\n"
            f"X-Token: {token}\r\n"
            f"X-Echo-Length: {echo['length']}\r\n"
            f"X-Echo-Sha256: {echo['sha256']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("utf-8", "surrogateescape")
        return head if request.method == "HEAD" else head + body


def parse_head(head: bytes) -> Forwarded | None:
    """A request head ending in CRLF CRLF, parsed strictly; None if the request line is
    unusable. Every liberty in the header fields is noted in ``problems``."""
    problems: list[str] = []
    body = head[:-4]
    if b"\n" in body.replace(b"\r\n", b"") or b"\r" in body.replace(b"\r\n", b""):
        problems.append("bare CR or LF in the head")
    if b"\x00" in body:
        problems.append("NUL in the head")
    if CONTROL.search(body.replace(b"\r\n", b"\n")):
        problems.append("a control byte in the head")
    lines = body.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None
    method, target, version = (p.decode("utf-8", "surrogateescape") for p in parts)
    if version != "HTTP/1.1":
        problems.append(f"version {version}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            problems.append(f"obs-fold: {line!r}")
            continue
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN_CHARS.fullmatch(name):
            problems.append(f"bad header line: {line!r}")
            continue
        headers.append(
            (name.decode("ascii"), value.strip(b" \t").decode("utf-8", "surrogateescape"))
        )
    request = Forwarded(method, target, version, headers, b"", head, problems)
    lengths = request.header_values("content-length")
    if len(lengths) > 1:
        problems.append(f"{len(lengths)} Content-Length fields")
    if any(not v.isdigit() for v in lengths):
        problems.append(f"Content-Length not digits: {lengths}")
    if request.header_values("transfer-encoding"):
        problems.append("Transfer-Encoding sent to the replica")
    return request


# -- the client side -------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    interim: int = 0  # 1xx answers that came before this one

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def closes(self) -> bool:
        return (self.header("connection") or "").lower() == "close"


class WireError(AssertionError):
    """The gateway's output is not a well-framed HTTP/1.1 response stream."""


class Client(asyncio.Protocol):
    """A raw client connection that keeps every byte that arrives, even when the
    connection then breaks (asyncio's StreamReader raises a stored error, such as the
    EPIPE of a write after the peer closed, before it hands out what it had buffered)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.eof = False
        self.error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data
        self._wake()

    def eof_received(self) -> None:
        self.eof = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof, self.error = True, exc
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Until more bytes or the end arrive."""
        if not self.received and not self.eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self._drain is not None and not self.eof:
            await self._drain

    def write_eof(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write_eof()

    def close(self, reset: bool = False) -> None:
        """Close (a FIN), or with ``reset`` abort with an RST."""
        if self.transport is None:
            return
        if reset:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.close()


async def connect(port: int) -> Client:
    _, client = await asyncio.get_running_loop().create_connection(Client, "127.0.0.1", port)
    return client


class AnswerReader:
    """Reads the gateway's answers strictly, one at a time, in order."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.buffer = bytearray()
        self.eof = False

    async def _more(self) -> None:
        client = self.client
        if self.eof:
            raise WireError(f"connection closed mid-answer; have {bytes(self.buffer)!r}")
        try:
            await asyncio.wait_for(client.wait(), READ_TIMEOUT_S)
        except TimeoutError:
            raise WireError(
                f"no answer within {READ_TIMEOUT_S} s; have {bytes(self.buffer)!r}"
            ) from None
        if client.received:
            self.buffer += client.received
            client.received.clear()
        else:
            self.eof = True

    async def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            await self._more()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._more()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def at_eof(self) -> bool:
        """Is the connection closed with nothing more on it? (Waits for the close.)"""
        while not self.eof:
            await self._more()
        return not self.buffer

    async def next(self, method: str) -> Answer | None:
        """The next final answer (1xx ones counted in ``interim``); None at a clean EOF."""
        interim = 0
        while True:
            while not self.buffer and not self.eof:
                await self._more()
            if not self.buffer and self.eof:
                if interim:
                    raise WireError("connection closed after a 1xx answer")
                return None
            status_line = await self._line()
            match = re.fullmatch(rb"HTTP/1\.1 (\d{3}) [^\r\n]*", status_line)
            if match is None:
                raise WireError(f"bad status line {status_line!r}")
            status = int(match[1])
            headers: list[tuple[str, str]] = []
            while line := await self._line():
                name, colon, value = line.partition(b":")
                if not colon or not TOKEN_CHARS.fullmatch(name):
                    raise WireError(f"bad response header line {line!r}")
                headers.append((name.decode(), value.strip(b" \t").decode("latin-1")))
            if 100 <= status < 200:
                interim += 1
                if headers:
                    raise WireError(f"headers in an interim answer: {headers}")
                continue
            answer = Answer(status, headers, b"", interim)
            lengths = [v for k, v in headers if k.lower() == "content-length"]
            chunked = [v for k, v in headers if k.lower() == "transfer-encoding"]
            if len(lengths) > 1 or (lengths and chunked):
                raise WireError(f"ambiguous response framing: {headers}")
            if method == "HEAD" or status in (204, 304):
                return answer
            if lengths:
                answer.body = await self._exactly(int(lengths[0]))
            elif chunked:
                if chunked != ["chunked"]:
                    raise WireError(f"response Transfer-Encoding {chunked}")
                body = bytearray()
                while size := int(await self._line(), 16):
                    body += await self._exactly(size)
                    if await self._line() != b"":
                        raise WireError("chunk data not followed by CRLF")
                while await self._line():
                    pass  # trailers
                answer.body = bytes(body)
            else:
                while not self.eof:
                    await self._more()
                answer.body = bytes(self.buffer)
                self.buffer.clear()
            return answer
