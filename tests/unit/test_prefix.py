"""Prefix-aware routing: prompts as chained blocks, the per-replica index, and each rule of
the ``prefix_affinity`` policy (match, minimum match, ties, load guard, engine signals)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.dataplane.policies import PrefixAffinity
from gateway.dataplane.prefix import (
    BLOCK_BYTES,
    BLOCK_TOKENS,
    PrefixIndex,
    parse_body,
    prompt_blocks,
)
from gateway.dataplane.replica import EngineLoad, Replica
from tests.fakes import Clock

SYSTEM = {"role": "system", "content": "You are a helpful assistant. " * 20}


def chat(*turns: str, system: dict[str, str] = SYSTEM) -> dict[str, Any]:
    roles = ("user", "assistant")
    return {
        "messages": [system, *({"role": roles[i % 2], "content": t} for i, t in enumerate(turns))]
    }


# -- prompts as blocks ----------------------------------------------------------------------


def test_a_conversation_s_turns_are_a_growing_prefix() -> None:
    one, two = (
        prompt_blocks(chat("hi " * 40)),
        prompt_blocks(chat("hi " * 40, "hello " * 20, "more")),
    )
    assert len(two) > len(one) > 1
    full = len(one) - 1  # the last block of turn one is partial: turn two extends it
    assert two[:full] == one[:full] and two[full] != one[full]
    other = prompt_blocks(chat("hi " * 40, system={"role": "system", "content": "Be terse."}))
    assert other[0] != one[0]  # chained: a different start changes every block after it


@pytest.mark.parametrize(
    ("request_", "blocks"),
    [
        ({"prompt": "x" * (3 * BLOCK_BYTES)}, 3),
        ({"prompt": ["x" * BLOCK_BYTES, "other"]}, 1),  # a batch: its first prompt
        ({"prompt": [1, 2, 3]}, 0),  # token ids: not a text to cut
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 200}]}]}, 4),
        ({"messages": "nope"}, 0),
        ({"messages": [7, {"role": "user"}]}, 1),
        ({"model": "m"}, 0),
        (None, 0),
        ([1], 0),
    ],
)
def test_what_a_prompt_is(request_: Any, blocks: int) -> None:
    assert len(prompt_blocks(request_)) == blocks


def test_bodies_that_are_no_json_parse_to_none() -> None:
    assert parse_body(b'{"a": 1}') == {"a": 1}
    assert parse_body(b"{nope") is None


# -- the index -------------------------------------------------------------------------------


def test_the_index_matches_leading_blocks_and_evicts_tails_first() -> None:
    index = PrefixIndex(capacity=4)
    index.record("a", (1, 2, 3))
    assert index.match("a", (1, 2, 9)) == 2 and index.match("a", (9, 2)) == 0
    assert index.match("b", (1,)) == 0
    index.record("a", (1, 5, 6))  # over capacity: the oldest tail goes, never the prefix
    assert index.size("a") == 4 and index.match("a", (1, 5, 6)) == 3
    assert index.match("a", (1, 2)) == 2 and index.match("a", (1, 2, 3)) == 2
    index.forget("a")
    assert index.match("a", (1,)) == 0
    with pytest.raises(ValueError):
        PrefixIndex(0)


def test_the_index_holds_no_more_than_the_engines_kv_cache() -> None:
    index = PrefixIndex(capacity=100)
    index.record("a", tuple(range(10)), kv_tokens=4 * BLOCK_TOKENS)  # the engine holds 4
    assert index.size("a") == 4 and index.match("a", tuple(range(10))) == 4
    index.record("a", (20, 21), kv_tokens=None)  # unknown again: the default bound
    assert index.size("a") == 6
    index.record("b", (1, 2), kv_tokens=1.0)  # less than a block: still the last one
    assert index.size("b") == 1


# -- the policy ------------------------------------------------------------------------------


def pool(*loads: int) -> list[Replica]:
    rs = [Replica(id=name, url=f"http://{name}") for name in "abcd"[: len(loads)]]
    for r, n in zip(rs, loads, strict=True):
        r.inflight, r.cap = n, 100
    return rs


def policy(clock: Clock | None = None) -> PrefixAffinity:
    return PrefixAffinity(clock=clock or Clock(), rng=random.Random(1))


def sent(p: PrefixAffinity, replica: Replica, request: dict[str, Any]) -> None:
    p.index.record(replica.id, prompt_blocks(request))


LONG = chat("tell me about " * 30, "sure " * 60, "and then?")
HISTORY = chat("tell me about " * 30, "sure " * 60)


@pytest.mark.parametrize(
    ("loads", "history_on", "expected", "why"),
    [
        ((0, 0, 0), "b", "b", "the replica with the conversation's prefix"),
        ((0, 1, 0), "b", "b", "a little busier, within the band: the prefix wins"),
        ((0, 17, 0), "b", "a", "past 1.5 x 0 + 16: the load guard"),
        ((8, 28, 8), "b", "b", "1.5 x 8 + 16 = 28: still in the band"),
        ((8, 29, 8), "b", "a", "29: out of it"),
        ((2, 0, 1), None, "b", "nothing matches: the least loaded"),
    ],
)
def test_prefix_within_the_load_band(
    loads: tuple[int, ...], history_on: str | None, expected: str, why: str
) -> None:
    p, rs = policy(), pool(*loads)
    by_id = {r.id: r for r in rs}
    if history_on:
        sent(p, by_id[history_on], HISTORY)
    chosen = p.pick(rs, prompt=prompt_blocks(LONG))
    assert chosen is not None and chosen.id == expected, why


def test_a_shared_system_prompt_alone_does_not_make_a_replica_hot() -> None:
    """Every replica that served the system prompt ties on it: load, then turns, decide;
    a match under the minimum share of the prompt counts for nothing."""
    p, rs = policy(), pool(0, 0, 0)
    for r in rs:
        sent(p, r, chat("first user's question"))
    picks = [p.pick(rs, prompt=prompt_blocks(chat(f"user {i} asks " * 5))) for i in range(6)]
    for r in picks:
        assert r is not None
        p.on_start(r)
    assert {r.id for r in picks if r} == {"a", "b", "c"}
    tiny = policy()
    a, b = pool(1, 0)
    tiny.index.record("a", prompt_blocks({"prompt": "x" * BLOCK_BYTES}))  # 1 block of 40
    assert tiny.pick([a, b], prompt=prompt_blocks({"prompt": "x" * 40 * BLOCK_BYTES})) is b


def test_matches_close_to_the_best_tie_and_load_decides() -> None:
    p, (a, b) = policy(), pool(1, 0)
    blocks = tuple(range(100))
    p.index.record("a", blocks[:60])
    p.index.record("b", blocks[:59])  # within 2 blocks of a's match: a tie
    assert p.pick([a, b], prompt=blocks) is b
    p = policy()
    p.index.record("a", blocks[:80])
    p.index.record("b", blocks[:77])
    assert p.pick([a, b], prompt=blocks) is a


def test_what_is_sent_is_recorded_and_a_replica_that_leaves_is_forgotten() -> None:
    p, (a, b) = policy(), pool(0, 0)
    blocks = prompt_blocks(LONG)
    first = p.pick([a, b], prompt=blocks)
    assert first is not None and p.index.match(first.id, blocks) == len(blocks)
    assert all(p.pick([a, b], prompt=blocks) is first for _ in range(5))  # it sticks
    p.forget(first.id)
    assert p.index.match(first.id, blocks) == 0


def test_what_is_recorded_is_bounded_by_the_chosen_engines_kv_cache() -> None:
    p, (a,) = policy(), pool(0)
    a.engine = EngineLoad(running=0, waiting=0, kv_usage=0.0, at=0.0, kv_tokens=3 * BLOCK_TOKENS)
    blocks = prompt_blocks(LONG)
    assert p.pick([a], prompt=blocks) is a
    assert p.index.size("a") == 3 and p.index.match("a", blocks) == 3  # the prefix it keeps


def test_an_engine_that_queues_is_passed_over_while_another_has_room() -> None:
    clock = Clock(10.0)
    p, (a, b) = policy(clock), pool(0, 0)
    sent(p, a, HISTORY)
    a.engine = EngineLoad(running=30, waiting=2, kv_usage=0.99, at=9.8)
    b.engine = EngineLoad(running=3, waiting=0, kv_usage=0.2, at=9.8)
    assert p.pick([a, b], prompt=prompt_blocks(LONG)) is b
    p = policy(clock)
    sent(p, a, HISTORY)
    b.engine = EngineLoad(running=30, waiting=1, kv_usage=0.99, at=9.8)  # both queue: the band
    assert p.pick([a, b], prompt=prompt_blocks(LONG)) is a
    p = policy(clock)
    sent(p, a, HISTORY)
    clock.now = 12.0  # the figures went stale: the gateway's own count, and the prefix
    b.engine = None
    assert p.pick([a, b], prompt=prompt_blocks(LONG)) is a


def test_engine_load_counts_what_other_clients_put_there() -> None:
    clock = Clock(5.0)
    p, (a, b) = policy(clock), pool(0, 1)
    a.engine = EngineLoad(running=6, waiting=0, kv_usage=0.5, at=5.0)  # others' requests
    assert p.load(a, 5.0) == 6 and p.load(b, 5.0) == 1
    assert p.pick([a, b]) is b  # no prompt: load alone


def test_it_waits_for_a_full_replica_as_least_connections_does() -> None:
    p = policy()
    (busy,) = pool(3)
    (spare,) = pool(0)
    spare.id = "spare"
    assert p.pick([busy], full=[spare], ahead=0) is None
    assert p.pick([busy], full=[spare], ahead=8) is busy
