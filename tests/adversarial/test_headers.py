"""Random header sets, one request per connection, written in random pieces: what
reaches the replica is what the client sent with only the README's header rules
applied (hop-by-hop fields and those a Connection field names dropped, never Host; the
client's forwarding fields replaced; ``_`` names dropped; a safe X-Request-ID kept),
names as sent, values without the whitespace around them, duplicates in order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.adversarial.checks import check_answered, play, stream_of
from tests.adversarial.streams import Spec, ok_requests

pytestmark = pytest.mark.asyncio(loop_scope="module")
PROFILE = settings.get_profile("adversarial")
cuts = st.lists(st.integers(0, 10**6), max_size=6)


@settings(PROFILE, max_examples=150)
@given(spec=ok_requests(), cuts=cuts)
async def test_random_header_sets_reach_the_replica_with_only_the_header_rules_applied(
    stack, spec: Spec, cuts: list[int]
) -> None:
    await stack.fresh()
    stream = stream_of([spec])
    answers, wire = await play(stack, stream, cuts)
    await check_answered(stack, stream, answers, wire)
