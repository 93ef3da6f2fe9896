"""Invalid requests: bad framing (Content-Length with Transfer-Encoding, two
Content-Lengths, bad chunk sizes, codings other than chunked), bad syntax (NUL and
control bytes, obs-fold, bare CR or LF, whitespace before a colon, bad methods and
versions) and requests past the client limits (request line, header block, body).

Each gets a 4xx of its own (501 for a transfer coding other than chunked), after the
answers to the requests before it, which stand; then the connection closes; nothing of
it, and nothing after it, reaches the replica. Requests refused by the gateway's rules
rather than the parser (dot-segments, a target that is not a path, no or two Host
fields, a Host value that is no host) get 400 and the connection goes on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.adversarial.checks import (
    check_answered,
    check_forwarded,
    check_ok_answer,
    play,
    records_of,
    stream_of,
)
from tests.adversarial.conftest import MAX_BODY_BYTES
from tests.adversarial.streams import (
    BAD_HOSTS,
    FATAL,
    SOFT_TARGETS,
    Field,
    Spec,
    fatal,
    ok_requests,
    soft_requests,
)
from tests.adversarial.wire import AnswerReader, connect

pytestmark = pytest.mark.asyncio(loop_scope="module")
PROFILE = settings.get_profile("adversarial")


INVALID = [why for why, _, _ in FATAL]


@pytest.mark.parametrize("why", INVALID)
async def test_each_invalid_request_gets_its_4xx_then_the_close_and_reaches_nobody(
    stack, why: str
) -> None:
    await stack.fresh()
    stream = stream_of([fatal(why)])
    answers, wire = await play(stack, stream, [])
    await check_answered(stack, stream, answers, wire)


SOFT = [
    *(Spec("GET", target, (Field(b"Host", b"x", "host"), Field(b"X-Token", b"", "token")), why=why)
      for target, why in SOFT_TARGETS),
    Spec("GET", "/p", (Field(b"X-Token", b"", "token"),), why="no Host"),
    Spec("GET", "/p", (Field(b"Host", b"x", "host"), Field(b"host", b"y", "host"),
                       Field(b"X-Token", b"", "token")), why="two Host fields"),
    *(Spec("GET", "/p", (Field(b"Host", host, "host"), Field(b"X-Token", b"", "token")),
           why=f"Host {host.decode()}") for host in BAD_HOSTS),
]  # fmt: skip


@pytest.mark.parametrize("spec", SOFT, ids=[f"{s.why}: {s.target}" for s in SOFT])
async def test_each_request_refused_by_rule_gets_400_and_the_connection_goes_on(
    stack, spec: Spec
) -> None:
    await stack.fresh()
    refused = Spec(spec.method, spec.target, spec.fields, kind="soft",
                   statuses=frozenset({400}), why=spec.why)  # fmt: skip
    follow_up = Spec(
        "GET", "/after", (Field(b"Host", b"x", "host"), Field(b"X-Token", b"", "token"))
    )
    stream = stream_of([refused, follow_up])
    answers, wire = await play(stack, stream, [])
    await check_answered(stack, stream, answers, wire)


@pytest.mark.parametrize("why", INVALID)
@settings(PROFILE, max_examples=6)
@given(
    before=st.lists(st.one_of(ok_requests(rich_headers=False), soft_requests()), max_size=3),
    after=st.lists(ok_requests(rich_headers=False), max_size=2),
    cuts=st.lists(st.integers(0, 10**6), max_size=10),
    pause_s=st.sampled_from([0.0, 0.0, 0.0, 0.001]),
)
async def test_after_an_invalid_request_earlier_answers_stand_then_one_4xx_and_close(
    stack,
    why: str,
    before: list[Spec],
    after: list[Spec],
    cuts: list[int],
    pause_s: float,
) -> None:
    """Each invalid request, after 0-3 others (accepted or refused by rule) and before
    0-2 more, the stream cut at random: 6 examples of each of the invalid requests."""
    await stack.fresh()
    stream = stream_of([*before, fatal(why), *after])
    answers, wire = await play(stack, stream, cuts, pause_s)
    await check_answered(stack, stream, answers, wire)


async def test_a_whole_chunked_body_over_the_limit_gets_413_and_the_stream_stays_in_step(
    stack,
) -> None:
    """Read to its end, an oversized body leaves the connection in step: the gateway may
    close it or go on, and if it goes on, the next request is answered as itself."""
    await stack.fresh()
    follow_up = Spec("POST", "/after", (Field(b"Host", b"x", "host"), Field(b"X-Token", b"", "token"),
                                         Field(b"Content-Length", b"2", "framing")), b"ok")  # fmt: skip
    stream = stream_of([follow_up])
    big = b"x" * (MAX_BODY_BYTES + 1)
    oversized = (
        b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%b\r\n0\r\n\r\n" % (len(big), big)
    )
    client = await connect(stack.port)
    client.write(oversized + stream.data)
    wire = AnswerReader(client)
    first = await wire.next("POST")
    assert first is not None and first.status == 413
    if first.closes:
        assert await wire.at_eof()
        assert records_of(stack, stream)[stream.tokens[0]] == []
    else:
        answer = await wire.next("POST")
        assert answer is not None
        (record,) = records_of(stack, stream)[stream.tokens[0]]
        check_ok_answer(
            follow_up,
            stream.tokens[0],
            answer,
            check_forwarded(follow_up, stream.tokens[0], record),
        )
    client.close()
    await stack.settle()
