"""Header hygiene over real sockets: what a replica gets, byte for byte, and what the
client gets back (issue 12).

Both ends speak raw HTTP: a client library would normalise exactly what is under test
(duplicate headers, odd names, dot-segments), and the replica records the request bytes
as they arrived.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.app import Gateway
from tests.component.conftest import pool_config

MakeGateway = Callable[[dict[str, Any]], Awaitable[Gateway]]
MakeReplica = Callable[..., Awaitable["RecordingReplica"]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


class RecordingReplica:
    """A replica on a free loopback port that keeps every request's exact bytes (health
    probes aside) and answers each with ``response``."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> RecordingReplica:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)\r$", head)
                body = await reader.readexactly(int(length[1])) if length else b""
                if head.startswith(b"GET /health "):
                    writer.write(OK)
                else:
                    self.requests.append(head + body)
                    writer.write(self.response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def only_request(self) -> tuple[str, list[tuple[str, str]]]:
        """The request line and header lines of the one request received."""
        (raw,) = self.requests
        line, *fields = raw.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        return line, [(n, v.strip()) for n, _, v in (f.partition(":") for f in fields)]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def replica() -> AsyncIterator[MakeReplica]:
    started: list[RecordingReplica] = []

    async def make(response: bytes = OK) -> RecordingReplica:
        r = await RecordingReplica(response).start()
        started.append(r)
        return r

    yield make
    for r in started:
        await r.stop()


async def send(
    port: int, head: list[str], extra: bytes = b"", body: bytes = b""
) -> tuple[int, list[tuple[str, str]]]:
    """One request over a fresh connection (``head``'s lines, then ``extra`` raw header
    lines, then ``body``): the status and header lines of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = "".join(f"{line}\r\n" for line in head).encode("latin-1")
        writer.write(lines + extra + b"\r\n" + body)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    line, *fields = answer.decode("latin-1").rstrip("\r\n").split("\r\n")
    return int(line.split()[1]), [(n, v.strip()) for n, _, v in (f.partition(":") for f in fields)]


def named(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name]


async def test_connection_naming_host_leaves_host_alone(
    replica: MakeReplica, gateway: MakeGateway
) -> None:
    r = await replica()
    gw = await gateway(pool_config([r.url]))
    status, _ = await send(gw.port, ["GET /p HTTP/1.1", "Host: api.example", "Connection: host"])
    assert status == 200
    _, headers = r.only_request()
    assert named(headers, "host") == ["api.example"]


async def test_every_connection_header_and_each_token_is_dropped(
    replica: MakeReplica, gateway: MakeGateway
) -> None:
    r = await replica()
    gw = await gateway(pool_config([r.url]))
    head = [
        "GET /p HTTP/1.1",
        "Host: x",
        "Connection: keep-alive, X-One",
        "X-One: 1",
        "X-Two: 2",
        "connection: x-TWO ,X-Three,,",
        "X-Three: 3",
        "X-Kept: yes",
    ]
    status, _ = await send(gw.port, head)
    assert status == 200
    _, headers = r.only_request()
    names = {n.lower() for n, _ in headers}
    assert names.isdisjoint({"connection", "keep-alive", "x-one", "x-two", "x-three"})
    assert named(headers, "x-kept") == ["yes"]


@pytest.mark.parametrize(
    "head",
    [
        ["GET /p HTTP/1.1", "Host: a", "Host: b"],
        ["GET /p HTTP/1.1", "Host: a", "host: a"],
        ["GET /p HTTP/1.0", "Host: a", "Host: b"],
        ["GET /p HTTP/1.1"],
    ],
    ids=["two-hosts", "same-host-twice", "two-hosts-http10", "no-host-http11"],
)
async def test_anything_but_one_host_gets_400_and_nothing_is_forwarded(
    replica: MakeReplica, gateway: MakeGateway, head: list[str]
) -> None:
    r = await replica()
    gw = await gateway(pool_config([r.url]))
    status, headers = await send(gw.port, head)
    assert status == 400
    assert GENERATED_ID.fullmatch(named(headers, "x-request-id")[0])
    # HTTP/1.0 may omit Host: it still goes through, with the replica's address
    assert (await send(gw.port, ["GET /p HTTP/1.0"]))[0] == 200
    _, forwarded = r.only_request()
    assert named(forwarded, "host") == [r.url.removeprefix("http://")]


async def test_request_headers_with_an_underscore_are_dropped(
    replica: MakeReplica, gateway: MakeGateway
) -> None:
    r = await replica()
    gw = await gateway(pool_config([r.url]))
    head = [
        "POST /p HTTP/1.1",
        "Host: x",
        "Content-Length: 4",
        "Transfer_Encoding: chunked",
        "X_Api_Key: k",
        "X-Api-Key: kept",
    ]
    status, _ = await send(gw.port, head, body=b"abcd")
    assert status == 200
    (raw,) = r.requests
    assert raw.endswith(b"\r\n\r\nabcd")
    _, headers = r.only_request()
    assert not [n for n, _ in headers if "_" in n]
    assert named(headers, "content-length") == ["4"]
    assert named(headers, "x-api-key") == ["kept"]


SPOOFED = [
    "Forwarded: for=6.6.6.6;host=evil;proto=https",
    "X-Forwarded-For: 6.6.6.6",
    "X-Forwarded-For: 7.7.7.7",
    "X-Forwarded-Host: evil.example",
    "X-Forwarded-Proto: https",
    "X-Real-IP: 6.6.6.6",
]


@pytest.mark.parametrize("trusted", [[], ["10.0.0.0/8", "::1"]], ids=["default", "others"])
async def test_an_untrusted_peer_s_forwarding_headers_are_set_anew(
    replica: MakeReplica, gateway: MakeGateway, trusted: list[str]
) -> None:
    r = await replica()
    config = pool_config([r.url])
    if trusted:
        config["trusted_proxies"] = trusted
    gw = await gateway(config)
    status, _ = await send(gw.port, ["GET /p HTTP/1.1", "Host: x", *SPOOFED])
    assert status == 200
    _, headers = r.only_request()
    assert named(headers, "x-forwarded-for") == ["127.0.0.1"]
    assert named(headers, "x-forwarded-proto") == ["http"]
    names = {n.lower() for n, _ in headers}
    assert names.isdisjoint({"forwarded", "x-forwarded-host", "x-real-ip"})


async def test_a_trusted_proxy_s_forwarding_headers_are_kept_and_for_is_appended(
    replica: MakeReplica, gateway: MakeGateway
) -> None:
    r = await replica()
    gw = await gateway({**pool_config([r.url]), "trusted_proxies": ["192.0.2.1", "127.0.0.0/8"]})
    status, _ = await send(gw.port, ["GET /p HTTP/1.1", "Host: x", *SPOOFED])
    assert status == 200
    _, headers = r.only_request()
    assert named(headers, "x-forwarded-for") == ["6.6.6.6, 7.7.7.7, 127.0.0.1"]
    assert named(headers, "x-forwarded-proto") == ["https"]
    assert named(headers, "forwarded") == ["for=6.6.6.6;host=evil;proto=https"]
    assert named(headers, "x-forwarded-host") == ["evil.example"]
    assert named(headers, "x-real-ip") == ["6.6.6.6"]


async def test_response_headers_named_in_connection_are_dropped(
    replica: MakeReplica, gateway: MakeGateway
) -> None:
    r = await replica(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nX-Internal: secret\r\n"
        b"Connection: X-Debug\r\nX-Debug: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Authenticate: Basic\r\nX-Public: yes\r\nContent-Length: 2\r\n\r\nok"
    )
    gw = await gateway(pool_config([r.url]))
    status, headers = await send(gw.port, ["GET /p HTTP/1.1", "Host: x"])
    assert status == 200
    names = {n.lower() for n, _ in headers}
    assert names.isdisjoint({"x-internal", "x-debug", "keep-alive", "proxy-authenticate"})
    assert named(headers, "x-public") == ["yes"]
    assert named(headers, "connection") == []  # keep-alive is HTTP/1.1's default


@pytest.mark.parametrize(
    "target",
    [
        "/predict/../control",
        "/predict/..",
        "/predict/./control",
        "/predict/%2e%2e/control",
        "/predict/%2E%2E/control",
        "/predict/.%2E/control",
        "/predict/%2e/control",
        "/predict%2f..%2fcontrol",
        "/predict%2F%2E%2E%2Fcontrol",
        "/predict/..;/control",
        "/predict/..\\control",
        "/predict%5c..%5ccontrol?q=1",
    ],
)
async def test_a_path_with_dot_segments_gets_400_and_nothing_is_forwarded(
    replica: MakeReplica, gateway: MakeGateway, target: str
) -> None:
    r = await replica()
    gw = await gateway(pool_config([r.url]))
    status, _ = await send(gw.port, [f"GET {target} HTTP/1.1", "Host: x"])
    assert status == 400
    assert r.requests == []


async def test_paths_with_dots_that_are_not_segments_go_through(
    replica: MakeReplica, gateway: MakeGateway
) -> None:
    """The guard for the test above: none of these is rejected, each goes as sent."""
    r = await replica()
    gw = await gateway(pool_config([r.url]))
    targets = [
        "/models/model.onnx",
        "/predict/a..b/...",
        "/models/org%2Fname%2Ev2",
        "/predict?next=/../x",
    ]
    for target in targets:
        assert (await send(gw.port, [f"GET {target} HTTP/1.1", "Host: x"]))[0] == 200
    assert [raw.split(b" ")[1].decode() for raw in r.requests] == targets


@pytest.mark.parametrize(
    "value",
    [b"has space", b"\xff\xfe-high-bytes", b"a" * 129, b"<script>", b"a,b"],
    ids=["space", "high-bytes", "too-long", "markup", "comma"],
)
async def test_an_unsafe_request_id_is_replaced_where_it_is_echoed_and_logged(
    replica: MakeReplica, gateway: MakeGateway, caplog: pytest.LogCaptureFixture, value: bytes
) -> None:
    r = await replica()
    gw = await gateway(pool_config([r.url]))
    with caplog.at_level(logging.DEBUG, logger="gateway.dataplane.proxy"):
        status, headers = await send(
            gw.port, ["GET /p HTTP/1.1", "Host: x"], b"X-Request-ID: " + value + b"\r\n"
        )
    assert status == 200
    (echoed,) = named(headers, "x-request-id")
    assert GENERATED_ID.fullmatch(echoed)
    _, forwarded = r.only_request()
    assert named(forwarded, "x-request-id") == [echoed]
    (entry,) = [rec for rec in caplog.records if rec.getMessage() == "request"]
    assert entry.request_id == echoed  # type: ignore[attr-defined]


async def test_a_safe_request_id_is_kept(replica: MakeReplica, gateway: MakeGateway) -> None:
    r = await replica()
    gw = await gateway(pool_config([r.url]))
    safe = "Req_1.2:abc-" + "x" * 116  # 128 characters, every allowed kind
    status, headers = await send(gw.port, ["GET /p HTTP/1.1", "Host: x", f"X-Request-ID: {safe}"])
    assert status == 200 and named(headers, "x-request-id") == [safe]
    assert named(r.only_request()[1], "x-request-id") == [safe]
