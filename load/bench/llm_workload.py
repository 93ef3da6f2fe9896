"""Seeded LLM workloads for ``python -m load.bench llm-chat | llm-rag | llm-overload``.

A workload is a list of conversations, each starting at its own time (open loop:
Poisson arrivals) and going turn by turn (closed loop within it: a turn is sent after the
answer to the one before and a think time), every turn re-sending the whole history, as
chat clients do, which is what makes a replica's prefix cache worth finding again.

* ``chat``: several shared system prompts, popular by a Zipf law (one is used far more
  than the others: the case where a cache-aware router piles a prompt's users onto one
  replica); 1 + a geometric number of turns (mean 3); user messages and answers
  lognormal in length, the shape of ShareGPT's (a long tail of long prompts; medians of
  about 70 words in and 90 tokens out after its usual filtering, as vLLM's
  ``benchmark_serving`` reports of it), scaled down so a CPU can stream them.
* ``rag``: a handful of long shared documents (thousands of words) as the system
  prompt, one short question each, short answers.
* ``overload``: short chats of three priority classes from five tenants, one of which
  sends most of the traffic (the flood), above what the replicas can serve.

Pure: the same seed gives the same workload; words come from a fixed vocabulary.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their can has been if more when will "
    "would who so no model cache token prompt answer question garden river stone light paper "
    "number system memory engine window table market music winter summer city"
)
VOCABULARY = tuple(_WORDS.split())


@dataclass(frozen=True)
class Turn:
    user: str
    max_tokens: int
    think_s: float  # the pause after the answer, before the next turn


@dataclass(frozen=True)
class Conversation:
    start_s: float
    system: str
    turns: tuple[Turn, ...]
    tenant: str = "t0"
    priority: str = "standard"


@dataclass(frozen=True)
class Shape:
    """A workload's knobs; lengths in words (user) and tokens (answers)."""

    rate: float  # conversations started per second
    systems: int = 8
    system_words: tuple[int, int] = (300, 1200)  # uniform range of a system prompt's length
    zipf_s: float = 1.1  # popularity exponent of the system prompts
    mean_turns: float = 3.0
    max_turns: int = 8
    user_median: float = 70.0
    user_sigma: float = 0.9
    user_max: int = 600
    answer_median: float = 60.0
    answer_sigma: float = 0.6
    answer_max: int = 256
    think_s: float = 1.0  # mean think time
    tenants: tuple[tuple[str, float], ...] = (("t0", 1.0),)  # name, share of conversations
    priorities: tuple[tuple[str, float], ...] = (("standard", 1.0),)
    calm_s: float = 0.0  # a first stretch at calm_rate, to measure the unloaded figures
    calm_rate: float = 0.0


CHAT = Shape(rate=4.0)
RAG = Shape(
    rate=10.0, systems=6, system_words=(2500, 4000), zipf_s=0.8, mean_turns=1.0, max_turns=1,
    user_median=20.0, user_sigma=0.4, user_max=60, answer_median=24.0, answer_sigma=0.4,
    answer_max=64,
)  # fmt: skip
FLOOD = "flood"  # llm-overload's flooding tenant
OVERLOAD = Shape(
    rate=24.0, systems=2, system_words=(100, 200), mean_turns=1.0, max_turns=1,
    user_median=60.0, answer_median=48.0, answer_max=128,
    tenants=((FLOOD, 0.65), ("t1", 0.0875), ("t2", 0.0875), ("t3", 0.0875), ("t4", 0.0875)),
    priorities=(("critical", 0.1), ("standard", 0.5), ("sheddable", 0.4)),
    calm_s=8.0, calm_rate=2.0,
)  # fmt: skip
SHAPES = {"llm-chat": CHAT, "llm-rag": RAG, "llm-overload": OVERLOAD}


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(n))


def lognormal(rng: random.Random, median: float, sigma: float, cap: int) -> int:
    return max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma))))


def zipf_weights(n: int, s: float) -> list[float]:
    weights = [1.0 / (k**s) for k in range(1, n + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def pick(rng: random.Random, choices: tuple[tuple[str, float], ...]) -> str:
    names = [name for name, _ in choices]
    return rng.choices(names, [weight for _, weight in choices])[0]


def generate(shape: Shape, duration_s: float, seed: int) -> list[Conversation]:
    """Conversations starting within ``duration_s``, in start order."""
    rng = random.Random(seed)
    systems = [
        f"System prompt {i}. " + words(rng, rng.randint(*shape.system_words))
        for i in range(shape.systems)
    ]
    popularity = zipf_weights(shape.systems, shape.zipf_s)
    p_more = 1.0 - 1.0 / shape.mean_turns  # geometric: a mean of mean_turns
    conversations: list[Conversation] = []
    t = 0.0
    while True:
        calm = t < shape.calm_s
        t += rng.expovariate(shape.calm_rate if calm else shape.rate)
        if calm and t >= shape.calm_s:  # the load rises: restart the clock at the change
            t = shape.calm_s + rng.expovariate(shape.rate)
        if t >= duration_s:
            return conversations
        n = 1
        while n < shape.max_turns and rng.random() < p_more:
            n += 1
        turns = tuple(
            Turn(
                words(rng, lognormal(rng, shape.user_median, shape.user_sigma, shape.user_max)),
                lognormal(rng, shape.answer_median, shape.answer_sigma, shape.answer_max),
                rng.expovariate(1.0 / shape.think_s),
            )
            for _ in range(n)
        )
        system = rng.choices(systems, popularity)[0]
        tenant, priority = pick(rng, shape.tenants), pick(rng, shape.priorities)
        conversations.append(Conversation(t, system, turns, tenant, priority))
