"""``prefix_affinity`` through the gateway, on LLM-like replicas with prefix caches: each
turn of a conversation goes where the turns before it went, so the engine finds the
history cached; round robin, on the same replicas, scatters them."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from backends.llm.api import make_app
from backends.llm.engine import Timing
from backends.llm.replica import Settings
from tests.component.conftest import pool_config

FAST = Timing(step_s=0.001, per_seq_s=0.0, prefill_token_s=0.0)
SYSTEM = {"role": "system", "content": "You answer questions about gardening. " * 8}


async def converse(client: openai.AsyncOpenAI, user: int, turns: int) -> list[bool]:
    """For each later turn: did the engine have the whole turn before it cached (the
    previous prompt, up to the last partial block of 16 tokens)?"""
    messages: list[Any] = [SYSTEM]
    cached, before = [], 0
    for turn in range(turns):
        messages.append({"role": "user", "content": f"user {user} turn {turn}: " * 12})
        reply = await client.chat.completions.create(model="m", messages=messages, max_tokens=24)
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        if turn:
            cached.append((reply.usage.prompt_tokens_details.cached_tokens or 0) >= before - 16)
        before = reply.usage.prompt_tokens
        messages.append({"role": "assistant", "content": reply.choices[0].message.content})
    return cached


@pytest.mark.parametrize("policy", ["prefix_affinity", "round_robin"])
async def test_a_conversation_finds_its_history_cached(serve_app, gateway, policy: str) -> None:  # type: ignore[no-untyped-def]
    urls = [await serve_app(make_app(Settings(model="m", timing=FAST))) for _ in range(3)]
    gw = await gateway(pool_config(urls, policy=policy))
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    later_turns_cached = []
    for user in range(3):
        later_turns_cached += await converse(client, user, turns=4)
    await client.close()
    if policy == "prefix_affinity":
        assert all(later_turns_cached)  # every later turn found its history
    else:
        assert not all(later_turns_cached)  # turns rotate over three cold caches
