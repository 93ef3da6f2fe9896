"""The LLM-like replica (backends/llm) over real sockets on 127.0.0.1: vLLM's OpenAI API,
its metrics, prefix caching across requests, sleep mode, loading, clients that leave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from backends.llm import text
from backends.llm.api import REPLICA, make_app
from backends.llm.engine import Timing
from backends.llm.replica import LlmReplica, Settings
from gateway.dataplane.engine_metrics import parse
from tests.conftest import eventually

FAST = Timing(step_s=0.001, per_seq_s=0.0, prefill_token_s=0.00001)
MakeLlm = Callable[..., Awaitable[tuple[str, LlmReplica]]]
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}]


@pytest.fixture
def llm(serve_app) -> MakeLlm:  # type: ignore[no-untyped-def]
    async def make(**settings: Any) -> tuple[str, LlmReplica]:
        app = make_app(Settings(**{"timing": FAST, **settings}))
        url = await serve_app(app)
        return url, app[REPLICA]

    return make


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def chat(client: aiohttp.ClientSession, url: str, **body: Any) -> tuple[int, Any]:
    payload = {"model": "llama-3-8b", "messages": CHAT, **body}
    async with client.post(f"{url}/v1/chat/completions", json=payload) as resp:
        return resp.status, await resp.json()


async def events(resp: aiohttp.ClientResponse) -> list[Any]:
    """The SSE events of a stream, ``[DONE]`` as the string itself."""
    raw = (await resp.read()).decode()
    assert raw.endswith("data: [DONE]\n\n")
    out = []
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: ")
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


async def test_a_chat_completion_has_its_answer_and_usage(llm: MakeLlm, client) -> None:  # type: ignore[no-untyped-def]
    url, _ = await llm()
    status, body = await chat(client, url, max_tokens=7)
    assert status == 200 and body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length" and choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 7
    prompt = len(text.tokenize(text.render_chat(CHAT)))
    assert body["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 7,
        "total_tokens": prompt + 7,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_a_streamed_chat_sends_role_tokens_finish_usage_and_done(
    llm: MakeLlm, client
) -> None:  # type: ignore[no-untyped-def]
    url, _ = await llm()
    payload = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 5, "stream": True,
               "stream_options": {"include_usage": True}}  # fmt: skip
    async with client.post(f"{url}/v1/chat/completions", json=payload) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        got = await events(resp)
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    words = [e["choices"][0]["delta"]["content"] for e in got[1:6]]
    assert len("".join(words).split()) == 5 and all(w.strip() for w in words)
    assert got[6]["choices"][0]["finish_reason"] == "length"
    assert got[7]["choices"] == [] and got[7]["usage"]["completion_tokens"] == 5
    assert got[8] == "[DONE]" and all(e["object"] == "chat.completion.chunk" for e in got[:8])


async def test_completions_answer_text_whole_and_streamed(llm: MakeLlm, client) -> None:  # type: ignore[no-untyped-def]
    url, _ = await llm()
    payload = {"model": "llama-3-8b", "prompt": "Once upon a time", "max_tokens": 3}
    async with client.post(f"{url}/v1/completions", json=payload) as resp:
        body = await resp.json()
    assert body["object"] == "text_completion" and len(body["choices"][0]["text"].split()) == 3
    async with client.post(f"{url}/v1/completions", json={**payload, "stream": True}) as resp:
        got = await events(resp)
    assert "".join(e["choices"][0]["text"] for e in got[:-1]) == body["choices"][0]["text"]


async def test_without_max_tokens_the_model_stops_on_its_own(llm: MakeLlm, client) -> None:  # type: ignore[no-untyped-def]
    url, _ = await llm(default_max_tokens=10)
    _, body = await chat(client, url)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert 5 <= body["usage"]["completion_tokens"] <= 15


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1]", 400, None),
        (orjson.dumps({"model": "gpt-5", "messages": CHAT}), 404, "model"),
        (orjson.dumps({"model": "llama-3-8b", "messages": CHAT, "n": 2}), 400, "n"),
        (
            orjson.dumps({"model": "llama-3-8b", "messages": CHAT, "max_tokens": 0}),
            400,
            "max_tokens",
        ),
        (orjson.dumps({"model": "llama-3-8b", "messages": []}), 400, "messages"),
        (orjson.dumps({"model": "llama-3-8b", "messages": [{"content": "x"}]}), 400, "messages"),
    ],
    ids=["not-json", "not-object", "unknown-model", "n", "max-tokens", "no-messages", "no-role"],
)
async def test_bad_requests_get_errors_in_openai_shape(  # type: ignore[no-untyped-def]
    llm: MakeLlm, client, payload: bytes, status: int, param: str | None
) -> None:
    url, replica = await llm()
    async with client.post(f"{url}/v1/chat/completions", data=payload) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert error["code"] == status and replica.engine.idle


async def test_models_health_and_vllm_metrics(llm: MakeLlm, client) -> None:  # type: ignore[no-untyped-def]
    url, replica = await llm(model="qwen-7b")
    async with client.get(f"{url}/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["qwen-7b"]
    async with client.get(f"{url}/health") as resp:
        assert resp.status == 200
    async with client.post(f"{url}/v1/chat/completions",
                           json={"model": "qwen-7b", "messages": CHAT, "max_tokens": 3}) as resp:  # fmt: skip
        assert resp.status == 200
    async with client.get(f"{url}/metrics") as resp:
        exposition = await resp.text()
    for line in (
        'vllm:num_requests_running{model_name="qwen-7b"} 0.0',
        'vllm:num_requests_waiting{model_name="qwen-7b"} 0.0',
        'vllm:kv_cache_usage_perc{model_name="qwen-7b"} 0.0',
        'vllm:generation_tokens_total{model_name="qwen-7b"} 3.0',
        'vllm:time_to_first_token_seconds_count{model_name="qwen-7b"} 1.0',
        'vllm:inter_token_latency_seconds_count{model_name="qwen-7b"} 2.0',
    ):
        assert line in exposition
    assert 'vllm:prefix_cache_queries_total{model_name="qwen-7b"}' in exposition
    read = parse(exposition.encode(), at=0.0)  # as the gateway reads it: the KV size too
    assert read is not None and read.kv_tokens == replica.engine.cache.num_blocks * 16


async def test_a_repeated_conversation_is_served_from_the_prefix_cache(
    llm: MakeLlm, client
) -> None:  # type: ignore[no-untyped-def]
    url, replica = await llm()
    long_chat = [{"role": "system", "content": "word " * 200}, *CHAT[1:]]
    _, first = await chat(client, url, messages=long_chat, max_tokens=20)
    answer = first["choices"][0]["message"]["content"]
    turn = [
        *long_chat,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And?"},
    ]
    _, second = await chat(client, url, messages=turn, max_tokens=2)
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    # the first turn's prompt and answer, in whole blocks of 16 tokens
    assert cached >= (first["usage"]["total_tokens"] // 16) * 16 - 16 > 0
    assert replica.engine.hits == cached


async def test_sleep_frees_the_accelerator_and_requests_wait_for_the_wake_up(
    llm: MakeLlm, client
) -> None:  # type: ignore[no-untyped-def]
    url, replica = await llm(wake_s=0.2)
    await chat(client, url, max_tokens=2)
    assert replica.accelerator_bytes() > 0 and replica.engine.cache.cached
    async with client.post(f"{url}/sleep") as resp:
        assert resp.status == 200
    async with client.get(f"{url}/is_sleeping") as resp:
        assert await resp.json() == {"is_sleeping": True}
    assert replica.accelerator_bytes() == 0 and not replica.engine.cache.cached
    waiting = asyncio.create_task(chat(client, url, max_tokens=2))
    await asyncio.sleep(0.1)
    assert not waiting.done()  # asleep: nothing is served
    async with client.post(f"{url}/wake_up") as resp:
        assert resp.status == 200
    status, body = await waiting
    assert status == 200 and body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    async with client.get(f"{url}/is_sleeping") as resp:
        assert await resp.json() == {"is_sleeping": False}


async def test_while_loading_health_and_requests_answer_503(llm: MakeLlm, client) -> None:  # type: ignore[no-untyped-def]
    url, _ = await llm(startup_delay_s=0.3)
    async with client.get(f"{url}/health") as resp:
        assert resp.status == 503
    status, body = await chat(client, url, max_tokens=1)
    assert status == 503 and body["error"]["code"] == 503

    async def healthy() -> bool:
        async with client.get(f"{url}/health") as resp:
            return resp.status == 200

    await eventually(healthy, 3, what="loaded")
    assert (await chat(client, url, max_tokens=1))[0] == 200


async def test_a_client_that_leaves_mid_stream_frees_its_kv_blocks(llm: MakeLlm, client) -> None:  # type: ignore[no-untyped-def]
    url, replica = await llm(timing=Timing(step_s=0.01, per_seq_s=0.0, prefill_token_s=0.0))
    payload = {"model": "llama-3-8b", "messages": CHAT, "max_tokens": 1000, "stream": True}
    resp = await client.post(f"{url}/v1/chat/completions", json=payload)
    await resp.content.readline()
    assert replica.engine.running
    resp.close()  # hang up
    await eventually(lambda: replica.engine.idle, 2, what="the request cancelled")
    cache = replica.engine.cache
    assert not cache.held and not cache.anonymous
    status, _ = await asyncio.wait_for(chat(client, url, max_tokens=2), 5)
    assert status == 200  # the engine goes on serving the others
