"""The OpenAI API through the gateway, with the official ``openai`` client: two models
routed by the body's ``model`` to two pools of LLM-like replicas (backends/llm), the
models listed by the gateway, and an unknown model a clean NotFoundError."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from backends.llm.api import REPLICA, make_app
from backends.llm.engine import Timing
from backends.llm.replica import Settings
from tests.component.conftest import pool_config

FAST = Timing(step_s=0.001, per_seq_s=0.0, prefill_token_s=0.0)
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
async def two_models(serve_app, gateway) -> Any:  # type: ignore[no-untyped-def]
    apps = {
        "llama-3-8b": make_app(Settings(model="llama-3-8b", aliases=("llama3",), timing=FAST)),
        "qwen-7b": make_app(Settings(model="qwen-7b", timing=FAST)),
    }
    urls = {m: await serve_app(app) for m, app in apps.items()}
    config = pool_config([urls["llama-3-8b"]])
    config["pools"] = {
        "llama": config["pools"]["default"],
        "qwen": {**config["pools"]["default"], "backends": [urls["qwen-7b"]]},
    }
    config["routes"] = [
        {"path": "/v1", "model": "llama-3-8b", "aliases": ["llama3"], "pool": "llama"},
        {"path": "/v1", "model": "qwen-7b", "pool": "qwen"},
    ]
    gw = await gateway(config)
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    yield client, {m: app[REPLICA] for m, app in apps.items()}
    await client.close()


async def test_each_model_is_answered_by_its_own_pool(two_models) -> None:  # type: ignore[no-untyped-def]
    client, replicas = two_models
    for model in ("llama-3-8b", "qwen-7b"):
        reply = await client.chat.completions.create(model=model, messages=HELLO, max_tokens=4)
        assert reply.model == model and reply.choices[0].finish_reason == "length"
        assert reply.usage is not None and reply.usage.completion_tokens == 4
    # an alias goes to its model's pool as it was sent: the engine answers to it too
    alias = await client.chat.completions.create(model="llama3", messages=HELLO, max_tokens=2)
    assert alias.model == "llama3" and alias.usage is not None
    assert [r.engine.queries > 0 for r in replicas.values()] == [True, True]


async def test_streamed_chat_through_the_gateway(two_models) -> None:  # type: ignore[no-untyped-def]
    client, _ = two_models
    stream = await client.chat.completions.create(
        model="qwen-7b", messages=HELLO, max_tokens=6, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    content, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            content.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    assert len("".join(content).split()) == 6
    assert usage is not None and usage.completion_tokens == 6


async def test_an_unknown_model_is_a_not_found_error_and_the_models_are_listed(two_models) -> None:  # type: ignore[no-untyped-def]
    client, replicas = two_models
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-5", messages=HELLO)
    assert "gpt-5" in str(caught.value) and caught.value.status_code == 404
    assert all(r.engine.queries == 0 for r in replicas.values())  # nothing was forwarded
    listed = [(m.id, m.owned_by) for m in (await client.models.list()).data]
    assert listed == [("llama-3-8b", "llama"), ("llama3", "llama"), ("qwen-7b", "qwen")]
