"""Pipelining: several requests in one write, or the stream cut at random offsets over
many writes (a cut may fall inside a request line, a field, a chunk size, a body),
with requests the gateway refuses by rule (400, connection kept) mixed in and maybe a
request asking for ``Connection: close`` in the middle. The answers come in order, one
per request up to the one that closes, each with its own token; every accepted request
reaches the replica once; nothing after the close is read as a request."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.adversarial.checks import check_answered, play, stream_of
from tests.adversarial.streams import Spec, closing, ok_requests, soft_requests

pytestmark = pytest.mark.asyncio(loop_scope="module")
PROFILE = settings.get_profile("adversarial")


@st.composite
def pipelined(draw: st.DrawFn) -> list[Spec]:
    specs = draw(
        st.lists(
            st.one_of(
                ok_requests(rich_headers=False),
                ok_requests(rich_headers=False),
                ok_requests(),
                soft_requests(),
            ),
            min_size=2,
            max_size=8,
        )
    )
    closes_at = draw(st.integers(0, 2 * len(specs)))  # past the end: no close at all
    if closes_at < len(specs) and specs[closes_at].kind == "ok":
        how = draw(st.sampled_from(["close", "upgrade", "Close"]))
        specs[closes_at] = closing(specs[closes_at], how)
    return specs


@settings(PROFILE, max_examples=150)
@given(
    specs=pipelined(),
    cuts=st.lists(st.integers(0, 10**6), max_size=12),
    pause_s=st.sampled_from([0.0, 0.0, 0.0, 0.001]),
)
async def test_pipelined_streams_cut_anywhere_are_answered_in_order_each_forwarded_once(
    stack, specs: list[Spec], cuts: list[int], pause_s: float
) -> None:
    await stack.fresh()
    closer = next((s for s in specs if s.closes), None)
    event("ends by " + ("nothing" if closer is None else closer.fields[-1].value.decode()))
    event(f"with a request refused by rule: {any(s.kind == 'soft' for s in specs)}")
    stream = stream_of(specs)
    answers, wire = await play(stack, stream, cuts, pause_s)
    await check_answered(stack, stream, answers, wire)
