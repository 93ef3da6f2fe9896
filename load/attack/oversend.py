"""A replica that sends more than it frames: ``python -m load.attack.oversend --port P``.

Each answer to ``POST /predict`` declares a Content-Length for a body that echoes the
request's ``X-Token``, then sends one more "response" on the same connection: a ``302``
whose Location names that token (what a Content-Length counted in characters instead of
bytes does by accident). A proxy that parses the extra bytes as the next response hands
one client's token to another. ``GET /health`` answers plainly.
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop


class _Replica(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.token = b""
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.token, self.url = b"", b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-token":
            self.token = value

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.url.startswith(b"/health"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        body = b'{"token": "%b"}' % self.token
        extra = b"HTTP/1.1 302 Found\r\nLocation: /stolen/%b\r\nContent-Length: 0\r\n\r\n" % (
            self.token
        )
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b%b"
            % (len(body), body, extra)
        )


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Replica, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
