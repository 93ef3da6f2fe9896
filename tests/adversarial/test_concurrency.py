"""Several clients at once on a pool with one slot, so that requests queue: some send
their whole stream and read every answer, others hang up after a random prefix and a
random wait (while their request is queued, at the replica, not yet read, or its body
half sent). Those that stayed get their own answers, in order; the slot and the queue,
the server's handlers and buffered bytes all come back; nobody's request reached the
replica twice, and no request cut off reached it at all. (Two clients leaving in one
turn of the loop, one of them queued, once leaked the slot: test_found_bugs.py.)"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.adversarial.checks import (
    check_answered,
    check_hung_up,
    play,
    stream_of,
    write_pieces,
)
from tests.adversarial.conftest import Stack
from tests.adversarial.streams import Spec, ok_requests
from tests.adversarial.wire import connect

pytestmark = pytest.mark.asyncio(loop_scope="module")
PROFILE = settings.get_profile("adversarial")
POOL = {"max_inflight_per_replica": 1, "concurrency_limit": "fixed"}  # one slot: a queue

Leave = tuple[float, float, str]  # the share of the stream sent, the wait, how it leaves
clients = st.tuples(
    st.lists(
        ok_requests(rich_headers=False, delay_ms=st.sampled_from([0, 0, 2, 10])),
        min_size=1,
        max_size=3,
    ),
    st.one_of(
        st.none(),
        st.tuples(
            st.floats(0, 1),
            st.sampled_from([0.0, 0.002, 0.01, 0.03]),
            st.sampled_from(["fin", "reset"]),
        ),
    ),
)

POOL = {"max_inflight_per_replica": 1, "concurrency_limit": "fixed"}  # one slot: a queue


async def leave_early(stack: Stack, specs: list[Spec], leave: Leave) -> None:
    share, wait_s, how = leave
    stream = stream_of(specs)
    upto = int(share * len(stream.data))
    client = await connect(stack.port)
    await write_pieces(client, stream.pieces([], upto))
    await asyncio.sleep(wait_s)
    event(f"a client left while requests were queued: {stack.pool.queued > 0}")
    client.close(reset=how == "reset")
    await stack.settle()
    check_hung_up(stack, stream, upto, [])


async def stay(stack: Stack, specs: list[Spec]) -> None:
    stream = stream_of(specs)
    answers, wire = await play(stack, stream, [])
    await check_answered(stack, stream, answers, wire)


@settings(PROFILE, max_examples=100)
@given(clients=st.lists(clients, min_size=2, max_size=5))
async def test_concurrent_clients_some_leaving_get_their_own_answers_and_the_pool_comes_back(
    stack, clients: list[tuple[list[Spec], Leave | None]]
) -> None:
    await stack.fresh()
    await asyncio.gather(
        *(stay(stack, specs) if leave is None else leave_early(stack, specs, leave)
          for specs, leave in clients)
    )  # fmt: skip
    await stack.settle()
