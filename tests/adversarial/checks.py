"""Playing a stream of requests at the gateway, and checking both ends against the oracle.

``play`` writes a stream in the given pieces while reading the answers as they come (a
client that wrote everything before reading could stall a gateway that stops reading
when its queue is full, which it may); ``check_answered`` checks the answers in order and
what the replica got; ``check_forwarded`` checks one request as the replica read it.
"""

from __future__ import annotations

import asyncio
import itertools
import re

import orjson

from tests.adversarial.conftest import Stack
from tests.adversarial.streams import BODY_METHODS, GATEWAY_ADDED, Spec, Stream
from tests.adversarial.wire import Answer, AnswerReader, Client, Forwarded, connect

_serial = itertools.count()
ISSUED: dict[str, Spec] = {}  # every token handed out in this process, and its request
GATEWAY_ID = re.compile(r"[0-9a-f]{32}")


def tokens_for(specs: list[Spec]) -> list[str]:
    """Tokens unique across every example (the replica is shared by a whole module)."""
    n = next(_serial)
    tokens = [f"t{n}-{i}" for i in range(len(specs))]
    ISSUED.update(zip(tokens, specs, strict=True))
    return tokens


def stream_of(specs: list[Spec]) -> Stream:
    return Stream(specs, tokens_for(specs))


async def write_pieces(client: Client, pieces: list[bytes], pause_s: float = 0.0) -> None:
    """Each piece in its own write, and (three turns of the loop) read by the gateway
    before the next is sent, so that the cuts are where the gateway sees them."""
    for piece in pieces:
        client.write(piece)
        await client.drain()
        for _ in range(3):
            await asyncio.sleep(0)
        if pause_s:
            await asyncio.sleep(pause_s)


def expected_answers(specs: list[Spec]) -> list[Spec]:
    """The requests of a stream that get an answer: up to and including the first that
    ends the connection (a fatal one, or one that asked for close)."""
    answered = []
    for spec in specs:
        answered.append(spec)
        if spec.kind == "fatal" or (spec.kind == "ok" and spec.closes):
            break
    return answered


async def play(
    stack: Stack, stream: Stream, cuts: list[int], pause_s: float = 0.0
) -> tuple[list[Answer], AnswerReader]:
    """Send the whole stream and read the answers the oracle expects, then whatever
    follows up to the end of the connection (or, on a kept-alive one, nothing)."""
    client = await connect(stack.port)
    sender = asyncio.create_task(write_pieces(client, stream.pieces(cuts), pause_s))
    answers: list[Answer] = []
    wire = AnswerReader(client)
    try:
        for spec in expected_answers(stream.specs):
            answer = await wire.next(spec.method or "GET")
            if answer is None:
                break
            answers.append(answer)
        await asyncio.wait_for(sender, 10)
        if answers and answers[-1].closes:
            await wire.at_eof()
    finally:
        sender.cancel()
        client.close()
    return answers, wire


def records_of(stack: Stack, stream: Stream) -> dict[str, list[Forwarded]]:
    """What the replica got for each of the stream's tokens."""
    assert stack.replica.unframed == [], (
        f"the replica got bytes that are no request: {stack.replica.unframed}"
    )
    mine = set(stream.tokens)
    got: dict[str, list[Forwarded]] = {t: [] for t in stream.tokens}
    for record in stack.replica.requests:
        token = record.token
        assert token in ISSUED, f"the replica got a request nobody sent: {record.raw_head!r}"
        if token in mine:
            got[token].append(record)
    return got


def check_forwarded(spec: Spec, token: str, record: Forwarded) -> str:
    """One request as the replica read it: the same method, target and body, one
    Content-Length (none for an empty body on a method without one), no
    Transfer-Encoding, the header rules applied. Returns the X-Request-ID it carried."""
    assert record.problems == [], f"{record.problems} in {record.raw_head!r}"
    assert (record.method, record.target, record.version) == (spec.method, spec.target, "HTTP/1.1")
    assert record.body == spec.body, f"body: {len(record.body)} bytes, sent {len(spec.body)}"
    lengths = record.header_values("content-length")
    if spec.body or spec.method in BODY_METHODS:
        assert lengths == [str(len(spec.body))], lengths
    else:
        assert lengths == [], lengths
    assert record.header_values("transfer-encoding") == []
    end_to_end = [(n, v) for n, v in record.headers if n.lower() not in GATEWAY_ADDED]
    expected = [(n, v.decode("utf-8", "surrogateescape")) for n, v in spec.forwarded_fields(token)]
    assert end_to_end == expected, f"fields: got {end_to_end}, expected {expected}"
    assert record.header_values("x-forwarded-for") == ["127.0.0.1"]
    assert record.header_values("x-forwarded-proto") == ["http"]
    (request_id,) = record.header_values("x-request-id")
    kept = spec.request_id()
    if kept is not None:
        assert request_id == kept, (request_id, kept)
    else:
        assert GATEWAY_ID.fullmatch(request_id), request_id
    return request_id


def check_ok_answer(spec: Spec, token: str, answer: Answer, request_id: str | None) -> None:
    """The replica's answer to this very request, relayed whole."""
    assert answer.status == 200, (answer.status, answer.body[:200])
    assert answer.header("x-token") == token, (answer.header("x-token"), token)
    expected = spec.digest()
    if spec.method == "HEAD":
        assert answer.body == b""
        assert answer.header("x-echo-length") == "0"
        assert answer.header("x-echo-sha256") == expected["sha256"]
    else:
        assert orjson.loads(answer.body) == {**expected, "token": token}
    assert answer.interim <= (1 if spec.expects_continue else 0), answer.interim
    assert answer.closes == spec.closes, f"Connection: close is {answer.closes}"
    if request_id is not None:
        assert answer.header("x-request-id") == request_id


def check_refusal(spec: Spec, answer: Answer) -> None:
    assert answer.status in spec.statuses, (spec.why, answer.status, answer.body[:200])
    assert answer.header("x-token") is None  # the gateway's own answer, not the replica's
    body = orjson.loads(answer.body) if spec.method != "HEAD" else {"status": answer.status}
    assert body["status"] == answer.status
    if spec.kind == "fatal":
        assert answer.closes, f"{spec.why}: answered without Connection: close"
    else:
        assert not answer.closes, f"{spec.why}: a bodiless refusal closed the connection"


async def check_answered(
    stack: Stack, stream: Stream, answers: list[Answer], wire: AnswerReader
) -> None:
    """Exactly one answer per request the gateway had to answer, in order, each the
    right one; after an answer that ends the connection, nothing but its end; and the
    replica got every accepted request once and nothing of any other."""
    answered = expected_answers(stream.specs)
    whys = [s.why or s.kind for s in stream.specs]
    assert len(answers) == len(answered), f"{len(answers)} answers to {whys}"
    records = records_of(stack, stream)
    for i, (spec, token) in enumerate(zip(stream.specs, stream.tokens, strict=True)):
        got = records[token]
        if i >= len(answered) or spec.kind != "ok":
            assert got == [], f"request {i} ({whys[i]}) was forwarded: {got[0].raw_head!r}"
            if i < len(answered):
                check_refusal(spec, answers[i])
            continue
        assert len(got) == 1, f"request {i} reached the replica {len(got)} times"
        request_id = check_forwarded(spec, token, got[0])
        check_ok_answer(spec, token, answers[i], request_id)
    if answers[-1].closes:
        assert wire.eof and not wire.buffer, f"bytes after the last answer: {wire.buffer!r}"
    else:
        assert not wire.eof and not wire.buffer, f"after the last answer: {wire.buffer!r}"
    await stack.settle()


def check_hung_up(stack: Stack, stream: Stream, upto: int, answers: list[Answer]) -> None:
    """After a client sent ``upto`` bytes of ``stream``, read ``answers`` and left (call
    once the gateway is at rest): a request it sent whole reached the replica at most
    once (once if it was answered), byte-exact; one it did not send whole, never."""
    records = records_of(stack, stream)
    for i, (spec, token) in enumerate(zip(stream.specs, stream.tokens, strict=True)):
        got = records[token]
        if stream.ends[i] > upto:
            assert got == [], f"request {i}, cut off, reached the replica: {got[0].raw_head!r}"
            continue
        assert len(got) <= 1, f"request {i} reached the replica {len(got)} times"
        if i < len(answers):
            assert len(got) == 1, f"request {i} was answered but never reached the replica"
        if got:
            request_id = check_forwarded(spec, token, got[0])
            if i < len(answers):
                check_ok_answer(spec, token, answers[i], request_id)
