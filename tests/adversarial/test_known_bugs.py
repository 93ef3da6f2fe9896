"""Gateway bugs the adversarial suite found, one test each, marked ``xfail(strict=True)``
until they are fixed (then the test passes, strict xfail fails it, and the marker goes).
Each reason says what happens and what should; each test is the minimal reproduction."""

from __future__ import annotations

import pytest

from tests.adversarial.checks import tokens_for
from tests.adversarial.conftest import Stack
from tests.adversarial.streams import Spec
from tests.adversarial.wire import AnswerReader, Client, connect
from tests.conftest import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def send(stack: Stack, data: bytes) -> tuple[AnswerReader, Client]:
    client = await connect(stack.port)
    client.write(data)
    return AnswerReader(client), client


def token() -> str:
    return tokens_for([Spec("", "", ())])[0]


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Pool._dispatch hands a freed slot to a queued waiter whose task was cancelled "
        "but has not run yet (its future is cancelled, the waiter still in _waiters): "
        "_start() counts the slot in flight, then future.set_result() raises "
        "InvalidStateError out of abandon()/release(), so the slot is never given back. "
        "Two clients hanging up in the same loop turn, the one at the replica first and "
        "the queued one second, leave pool.inflight at 1 for good; on a one-slot pool "
        "every later request then waits out queue.timeout_s and gets 503"
    ),
)
async def test_two_clients_leaving_in_one_turn_one_of_them_queued_leak_no_slot() -> None:
    stack = await Stack.start({"max_inflight_per_replica": 1, "concurrency_limit": "fixed"})
    try:
        slow = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Token: %b\r\nX-Delay-Ms: 300\r\n\r\n"
        _, at_replica = await send(stack, slow % token().encode())
        await eventually(lambda: stack.pool.inflight == 1)
        _, queued = await send(stack, slow % token().encode())
        await eventually(lambda: stack.pool.queued == 1)
        at_replica.close()  # both in one turn: the gateway sees the two hang-ups together
        queued.close()
        await stack.settle()  # fails: inflight=1 queued=0, and it stays so
    finally:
        await stack.stop()


@pytest.mark.parametrize("paused_by", ["pipelining", "a large body"])
@pytest.mark.xfail(
    strict=True,
    reason=(
        "a hang-up goes unseen while the gateway is not reading the connection: with "
        "more than limits.max_pipelined requests queued, or a request body past the "
        "256 KiB high-water mark that no handler reads yet, the transport is paused, "
        "so the client's FIN (or RST) is not read, connection_lost does not come, and "
        "the request at the replica is not cancelled: it holds its slot for nobody "
        "until the replica answers (up to timeouts.request_s), against README's "
        "'a client that closes its connection before the response head cancels its "
        "request'. Only writing the answer reveals the hang-up"
    ),
)
async def test_a_hang_up_cancels_the_request_even_while_the_gateway_is_not_reading(
    stack: Stack, paused_by: str
) -> None:
    await stack.fresh()
    slow = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Token: %b\r\nX-Delay-Ms: 3000\r\n\r\n"
    data = slow % token().encode()
    if paused_by == "pipelining":
        data += b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n" * 4  # 5 queued, max_pipelined 3
    else:
        body = b"x" * 300_000
        data += b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    _, writer = await send(stack, data)
    await eventually(lambda: stack.pool.inflight == 1)
    writer.close()
    await stack.settle()  # fails: inflight=1 until the replica answers, 3 s later


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\n\r\nhello",
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
@pytest.mark.xfail(
    strict=True,
    reason=(
        "a request offering an upgrade (Connection: Upgrade, Upgrade: h2c) that has a "
        "body: llhttp stops at the head (HttpParserUpgrade) and reports the message "
        "complete with no body, and the gateway, answering it as plain HTTP/1.1, "
        "forwards it with Content-Length: 0: the replica gets POST with an empty body "
        "and the client a 200 for a request it did not send. It should forward the "
        "body (RFC 9110 7.8: a server may ignore Upgrade, not the content) or refuse"
    ),
)
async def test_a_request_offering_an_upgrade_keeps_its_body(stack: Stack, framing: bytes) -> None:
    await stack.fresh()
    t = token()
    head = b"POST /up HTTP/1.1\r\nHost: x\r\nX-Token: %b\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
    wire, writer = await send(stack, head % t.encode() + framing)
    answer = await wire.next("POST")
    writer.close()
    await stack.settle()
    got = stack.replica.with_token(t)
    if got:  # forwarded: with its body
        assert got[0].body == b"hello" and got[0].header_values("content-length") == ["5"]
    else:  # or refused
        assert answer is not None and 400 <= answer.status < 500


@pytest.mark.parametrize(
    "codings",
    [
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: deflate, chunked",
        b"Transfer-Encoding: x-custom, chunked",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
    ],
    ids=["gzip,chunked", "deflate,chunked", "unknown,chunked", "gzip then chunked fields"],
)
@pytest.mark.xfail(
    strict=True,
    reason=(
        "a transfer coding before chunked is dropped unapplied: llhttp decodes only the "
        "chunked framing, the gateway strips Transfer-Encoding as hop-by-hop, and the "
        "replica gets the still-gzip-coded bytes as an identity body under "
        "Content-Length, with nothing saying they are coded. RFC 9112 6.1: a server "
        "SHOULD answer a transfer coding it does not understand with 501; it must not "
        "forward the request as if it had none"
    ),
)
async def test_a_transfer_coding_other_than_chunked_is_refused_not_dropped(
    stack: Stack, codings: bytes
) -> None:
    await stack.fresh()
    t = token()
    data = b"POST /tc HTTP/1.1\r\nHost: x\r\nX-Token: %b\r\n%b\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    wire, writer = await send(stack, data % (t.encode(), codings))
    answer = await wire.next("POST")
    writer.close()
    await stack.settle()
    assert stack.replica.with_token(t) == []
    assert answer is not None and answer.status in (400, 501)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "an HTTP/1.0 request with Transfer-Encoding (and Connection: keep-alive) is "
        "decoded as chunked and the connection kept: the request pipelined after it is "
        "forwarded and answered. RFC 9112 6.1: a server MUST treat such a message's "
        "framing as faulty and close the connection after it (the sender may have "
        "framed it otherwise: the classic request-smuggling gap between a 1.0 hop and "
        "a 1.1 one)"
    ),
)
async def test_an_http_1_0_request_with_transfer_encoding_ends_the_connection(
    stack: Stack,
) -> None:
    await stack.fresh()
    first, second = token(), token()
    data = (
        b"POST /a HTTP/1.0\r\nHost: x\r\nX-Token: %b\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x\r\nX-Token: %b\r\n\r\n"
    ) % (first.encode(), second.encode())
    wire, writer = await send(stack, data)
    assert await wire.next("POST") is not None
    after = await wire.next("GET")  # None: the connection ended
    writer.close()
    await stack.settle()
    assert stack.replica.with_token(second) == [], "the request after it was forwarded"
    assert after is None, f"the request after it was answered {after.status}"


@pytest.mark.parametrize("host", [b"x y", b"a/b", b"a@b", b"x:8o", b"[::1"])
@pytest.mark.xfail(
    strict=True,
    reason=(
        "a Host field whose value is no uri-host [':' port] is forwarded as it is. "
        "RFC 9112 3.2: a server MUST answer 400 to a request whose Host field value is "
        "invalid; the gateway checks only how many Host fields there are "
        "(headers.request_problem), and a replica that builds URLs from Host gets "
        "'a/b' or 'a@b'"
    ),
)
async def test_a_host_field_with_an_invalid_value_gets_400_and_reaches_nobody(
    stack: Stack, host: bytes
) -> None:
    await stack.fresh()
    t = token()
    wire, writer = await send(
        stack, b"GET /h HTTP/1.1\r\nHost: %b\r\nX-Token: %b\r\n\r\n" % (host, t.encode())
    )
    answer = await wire.next("GET")
    writer.close()
    await stack.settle()
    assert stack.replica.with_token(t) == []
    assert answer is not None and answer.status == 400


@pytest.mark.xfail(
    strict=True,
    reason=(
        "'Transfer-Encoding: chunked<HTAB>' gets 400 (llhttp: 'Request has invalid "
        "Transfer-Encoding'), though a trailing space is accepted: both are OWS, which "
        "RFC 9110 5.5 says a parser MUST exclude from the field value. Safe (refused, "
        "nothing forwarded) but a valid request is refused"
    ),
)
async def test_a_tab_after_chunked_is_whitespace_and_the_body_is_forwarded(stack: Stack) -> None:
    await stack.fresh()
    t = token()
    data = b"POST /t HTTP/1.1\r\nHost: x\r\nX-Token: %b\r\nTransfer-Encoding: chunked\t\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    wire, writer = await send(stack, data % t.encode())
    answer = await wire.next("POST")
    writer.close()
    await stack.settle()
    assert answer is not None and answer.status == 200
    (record,) = stack.replica.with_token(t)
    assert record.body == b"abc"


@pytest.mark.parametrize("target", [b"*", b"http://x/p"])
@pytest.mark.xfail(
    strict=True,
    reason=(
        "the 400 for a request target that is not a path (server._serve) carries no "
        "X-Request-ID, though README says every answer does (the proxy's own refusals, "
        "e.g. for dot-segments, do carry one)"
    ),
)
async def test_the_400_for_a_target_that_is_not_a_path_carries_a_request_id(
    stack: Stack, target: bytes
) -> None:
    await stack.fresh()
    wire, writer = await send(stack, b"OPTIONS %b HTTP/1.1\r\nHost: x\r\n\r\n" % target)
    answer = await wire.next("OPTIONS")
    writer.close()
    await stack.settle()
    assert answer is not None and answer.status == 400
    assert answer.header("x-request-id")
