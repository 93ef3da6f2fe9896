"""The LLM benchmarks' pure parts: seeded workloads of the right shape, and the figures
taken from what the client saw."""

from __future__ import annotations

import statistics
from collections import Counter

from load.bench.llm import overload_table, summarize
from load.bench.llm_workload import CHAT, FLOOD, OVERLOAD, RAG, generate


def test_the_same_seed_gives_the_same_conversations() -> None:
    assert generate(CHAT, 20, seed=3) == generate(CHAT, 20, seed=3)
    assert generate(CHAT, 20, seed=3) != generate(CHAT, 20, seed=4)


def test_chat_has_popular_system_prompts_several_turns_and_a_long_tail() -> None:
    conversations = generate(CHAT, 200, seed=1)
    starts = [c.start_s for c in conversations]
    assert starts == sorted(starts) and 0.8 * 800 < len(conversations) < 1.2 * 800  # 4/s
    popularity = Counter(c.system for c in conversations).most_common()
    assert len(popularity) == CHAT.systems and popularity[0][1] > 3 * popularity[-1][1]
    turns = [len(c.turns) for c in conversations]
    assert 2.5 < statistics.mean(turns) < 3.5 and max(turns) <= CHAT.max_turns
    lengths = [len(t.user.split()) for c in conversations for t in c.turns]
    assert 55 < statistics.median(lengths) < 90 and max(lengths) > 5 * statistics.median(lengths)
    assert all(1 <= t.max_tokens <= CHAT.answer_max for c in conversations for t in c.turns)


def test_rag_is_long_documents_and_short_questions() -> None:
    conversations = generate(RAG, 30, seed=1)
    assert all(len(c.turns) == 1 and len(c.system.split()) >= 2500 for c in conversations)
    assert all(len(c.turns[0].user.split()) <= RAG.user_max for c in conversations)


def test_overload_has_a_calm_start_classes_and_a_flood() -> None:
    conversations = generate(OVERLOAD, 30, seed=1)
    calm = [c for c in conversations if c.start_s < OVERLOAD.calm_s]
    loaded = [c for c in conversations if c.start_s >= OVERLOAD.calm_s]
    assert len(calm) / OVERLOAD.calm_s < len(loaded) / (30 - OVERLOAD.calm_s) / 4
    tenants = Counter(c.tenant for c in conversations)
    assert tenants["flood"] > 0.55 * len(conversations)
    assert set(Counter(c.priority for c in conversations)) == {"critical", "standard", "sheddable"}


def test_the_summary_of_a_run() -> None:
    def answer(status: int, ttft: float | None, tokens: int, start: float = 0.0) -> dict:  # type: ignore[type-arg]
        return {"start_s": start, "tenant": "t", "priority": "standard", "status": status,
                "ttft_s": ttft, "gaps_s": [0.01, 0.03], "tokens": tokens}  # fmt: skip

    run = {
        "wall_s": 2.0,
        "answers": [answer(200, 0.1, 10), answer(200, 0.3, 30), answer(429, None, 0),
                    answer(0, None, 0)],
        "replicas": [{"prompt": 300, "queries": 400, "hits": 100},
                     {"prompt": 100, "queries": 0, "hits": 0}],
    }  # fmt: skip
    s = summarize(run)
    assert (s["requests"], s["errors"], s["shed"]) == (4, 1, 1)
    assert s["ttft_p50"] == 300 and s["itl_p99"] == 30 and s["tokens_per_s"] == 20
    assert s["hit_rate"] == 0.25 and s["prompt_share"] == [75, 25]


def test_the_overload_table_compares_the_others_with_and_without_the_flood() -> None:
    def answer(tenant: str, ttft: float, start: float = 10.0, priority: str = "standard") -> dict:  # type: ignore[type-arg]
        return {"start_s": start, "tenant": tenant, "priority": priority, "status": 200,
                "ttft_s": ttft, "gaps_s": [], "tokens": 1}  # fmt: skip

    run = {
        "contestant": "c", "wall_s": 1.0, "replicas": [{"prompt": 1, "queries": 1, "hits": 0}],
        "answers": [answer("t1", 0.4), answer(FLOOD, 9.0), answer("t1", 0.01, start=1.0),
                    answer("t2", 0.02, priority="critical")],
        "unflooded": [answer("t1", 0.1), answer("t1", 0.01, start=1.0)],
    }  # fmt: skip
    row = overload_table([run], calm_s=8.0).splitlines()[-1]
    assert row.endswith("| 400 / 100 (4.0x) |")  # the flood's own and calm turns left out
