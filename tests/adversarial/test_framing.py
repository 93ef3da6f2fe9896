"""Content-Length against chunked framing: the same body sent both ways, on one
keep-alive connection in random pieces (chunks cut anywhere, sizes with leading zeros
in either case, chunk extensions, trailers), reaches the replica as the same bytes under
one Content-Length, and no trailer becomes a header."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.adversarial.checks import check_answered, play, records_of, stream_of
from tests.adversarial.streams import Field, Spec, chunked_bodies, ok_requests, recased

pytestmark = pytest.mark.asyncio(loop_scope="module")
PROFILE = settings.get_profile("adversarial")
cuts = st.lists(st.integers(0, 10**6), max_size=10)


@st.composite
def one_body_two_framings(draw: st.DrawFn) -> list[Spec]:
    """A request with a body, then the same request chunked (or the other way round)."""
    spec = draw(ok_requests(rich_headers=draw(st.booleans())))
    plain = tuple(f for f in spec.fields if f.role != "framing")
    length = Field(
        draw(recased("Content-Length")).encode(), str(len(spec.body)).encode(), "framing"
    )
    te = Field(
        draw(recased("Transfer-Encoding")).encode(), draw(recased("chunked")).encode(), "framing"
    )
    by_length = replace(spec, fields=(*plain, length), chunked=None)
    if spec.method == "HEAD":
        return [by_length, by_length]
    chunked = replace(spec, fields=(te, *plain), chunked=draw(chunked_bodies(spec.body)))
    pair = [by_length, chunked]
    return pair if draw(st.booleans()) else pair[::-1]


@settings(PROFILE, max_examples=150)
@given(specs=one_body_two_framings(), cuts=cuts)
async def test_a_body_sent_with_content_length_or_chunked_reaches_the_replica_the_same(
    stack, specs: list[Spec], cuts: list[int]
) -> None:
    await stack.fresh()
    stream = stream_of(specs)
    answers, wire = await play(stack, stream, cuts)
    await check_answered(stack, stream, answers, wire)
    first, second = (records_of(stack, stream)[t][0] for t in stream.tokens)
    assert first.body == second.body == specs[0].body
    assert first.header_values("content-length") == second.header_values("content-length")
    assert not any(name.lower().startswith("x-trailer") for name, _ in second.headers)
