"""The LLM replica's engine model: batching, the prefix cache, KV pressure, preemption."""

from __future__ import annotations

import random

import pytest

from backends.llm.engine import BLOCK_TOKENS, BlockCache, Engine, Sequence, Timing, block_hashes

T = Timing(step_s=0.01, per_seq_s=0.001, prefill_token_s=0.0001)


def count_up(seq: Sequence) -> int:
    return 1000 + seq.generated


def run(engine: Engine) -> list[float]:
    """Step until idle; the passes' durations."""
    durations = []
    for _ in range(10_000):
        if engine.idle:
            return durations
        durations.append(engine.step(count_up).duration_s)
    raise AssertionError("the engine never went idle")


def balanced(cache: BlockCache) -> bool:
    return cache.free + len(cache.held) + len(cache.cached) + cache.anonymous == cache.num_blocks


@pytest.mark.parametrize(
    ("shared", "hit_tokens"),
    [
        (64, 63),  # the whole prompt cached: only its last token is computed again
        (40, 32),  # two whole blocks shared, the rest of the third differs
        (15, 0),  # less than a block: nothing to share
        (0, 0),
    ],
)
def test_prefill_counts_only_what_the_cache_lacks(shared: int, hit_tokens: int) -> None:
    engine = Engine(num_blocks=64, timing=T)
    first = list(range(64))
    engine.submit(Sequence(1, first, max_tokens=1))
    assert run(engine) == [pytest.approx(T.pass_s(1, 64))]
    second = first[:shared] + [9000 + i for i in range(64 - shared)]
    engine.submit(Sequence(2, second, max_tokens=1))
    assert run(engine) == [pytest.approx(T.pass_s(1, 64 - hit_tokens))]
    assert (engine.queries, engine.hits) == (128, hit_tokens)


def test_the_next_turn_finds_the_previous_answer_cached() -> None:
    engine = Engine(num_blocks=64, timing=T)
    turn = Sequence(1, list(range(20)), max_tokens=28)  # 48 tokens: three whole blocks
    engine.submit(turn)
    run(engine)
    follow_up = Sequence(2, [*turn.tokens, *range(500, 510)], max_tokens=1)
    engine.submit(follow_up)
    run(engine)
    assert follow_up.cached_tokens == 48


def test_sequences_batch_up_to_max_num_seqs_and_decode_slows_with_the_batch() -> None:
    engine = Engine(num_blocks=64, max_num_seqs=2, timing=T)
    for i in range(3):
        engine.submit(Sequence(i, [i] * 8, max_tokens=2))
    first = engine.step(count_up)
    assert [s.id for s, _ in first.tokens] == [0, 1] and len(engine.waiting) == 1
    assert first.duration_s == pytest.approx(T.pass_s(2, 16))
    second = engine.step(count_up)
    assert [s.id for s in second.finished] == [0, 1]
    third = engine.step(count_up)  # the third is admitted once a place is free
    assert third.duration_s == pytest.approx(T.pass_s(1, 8))
    assert [s.id for s, _ in third.tokens] == [2]


def test_a_request_waits_while_the_kv_cache_is_full() -> None:
    engine = Engine(num_blocks=4, timing=T)
    engine.submit(Sequence(1, list(range(40)), max_tokens=8))  # 3 blocks, 4 once it grows
    engine.submit(Sequence(2, list(range(100, 120)), max_tokens=1))  # 2 blocks
    engine.step(count_up)
    assert [s.id for s in engine.running] == [1] and [s.id for s in engine.waiting] == [2]
    run(engine)
    assert engine.idle and balanced(engine.cache)


def test_the_least_recently_used_blocks_are_evicted_first() -> None:
    engine = Engine(num_blocks=4, timing=T)
    old, recent = list(range(32)), list(range(100, 132))
    for i, prompt in enumerate((old, recent)):
        engine.submit(Sequence(i, prompt, max_tokens=1))
        run(engine)
    engine.submit(Sequence(2, list(range(200, 232)), max_tokens=1))  # needs two blocks
    run(engine)
    assert engine.cache.hits(block_hashes(recent)) == 2
    assert engine.cache.hits(block_hashes(old)) == 0


def test_kv_pressure_preempts_the_last_admitted_which_finishes_later_whole() -> None:
    engine = Engine(num_blocks=5, timing=T)
    a = Sequence(1, list(range(BLOCK_TOKENS)), max_tokens=BLOCK_TOKENS * 2)
    b = Sequence(2, list(range(100, 100 + BLOCK_TOKENS)), max_tokens=BLOCK_TOKENS * 2)
    engine.submit(a)
    engine.submit(b)
    preempted = []
    for _ in range(1000):
        if engine.idle:
            break
        preempted += [s.id for s in engine.step(count_up).preempted]
        assert balanced(engine.cache)
    assert preempted and preempted[0] == 2
    assert a.generated == b.generated == BLOCK_TOKENS * 2
    assert b.tokens[BLOCK_TOKENS:] == [1000 + i for i in range(BLOCK_TOKENS * 2)]


def test_a_request_larger_than_the_cache_is_refused() -> None:
    with pytest.raises(ValueError, match="more KV blocks"):
        Engine(num_blocks=2).submit(Sequence(1, list(range(30)), max_tokens=10))


def test_blocks_balance_under_a_random_workload() -> None:
    rng = random.Random(7)
    engine = Engine(num_blocks=40, max_num_seqs=8, timing=T)
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(8, 60))] for _ in range(5)]
    live = []
    for i in range(200):
        prompt = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 40))]
        seq = Sequence(i, prompt, max_tokens=rng.randrange(1, 60))
        engine.submit(seq)
        live.append(seq)
        if rng.random() < 0.1:
            engine.cancel(rng.choice(live))
        engine.step(count_up)
        assert balanced(engine.cache) and 0 <= engine.cache.usage <= 1
    run(engine)
    assert not engine.cache.held and not engine.cache.anonymous and balanced(engine.cache)
    assert 0 < engine.hits < engine.queries
