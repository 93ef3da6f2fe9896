"""Token metrics through the gateway, from a replica whose stream has known timings: its
response head at once, the first token 0.3 s later, then a token every 0.05 s. The
gateway's TTFT, inter-token gaps and token counts come from the stream, and the latency
its policy learns is the first token's, not the head's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.component.conftest import pool_config

FIRST_S, GAP_S, TOKENS = 0.3, 0.05, 5
USAGE = {"prompt_tokens": 40, "completion_tokens": TOKENS, "total_tokens": 40 + TOKENS,
         "prompt_tokens_details": {"cached_tokens": 32}}  # fmt: skip


def chunk(delta: dict[str, str]) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": None}
    return b"data: " + orjson.dumps({"object": "chat.completion.chunk", "choices": [choice]})


async def completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        answer = {"choices": [{"message": {"content": "hi"}}], "usage": USAGE}
        return web.json_response(answer)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)  # the head goes out at once, as engines do
    await response.write(chunk({"role": "assistant", "content": ""}) + b"\n\n")
    await asyncio.sleep(FIRST_S)
    for i in range(TOKENS):
        if i:
            await asyncio.sleep(GAP_S)
        await response.write(chunk({"content": f" w{i}"}) + b"\n\n")
    usage = orjson.dumps({"object": "chat.completion.chunk", "choices": [], "usage": USAGE})
    await response.write(b"data: " + usage + b"\n\ndata: [DONE]\n\n")
    await response.write_eof()
    return response


def samples(text: str, prefix: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    """Every sample whose name starts with ``prefix``: (name, label values) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(prefix)
    }


@pytest.fixture
async def llm(serve_app, gateway) -> Any:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    config = pool_config([await serve_app(app)], policy="peak_ewma")
    config["routes"] = [{"path": "/v1", "model": "m-8b", "pool": "default"}]
    return await gateway(config)


async def chat(client, gw, stream: bool) -> bytes:  # type: ignore[no-untyped-def]
    body = {"model": "m-8b", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with client.post(f"{gw.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_a_stream_s_tokens_and_timings(llm, client, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger="gateway.dataplane.proxy")
    body = await chat(client, llm, stream=True)
    assert body.endswith(b"data: [DONE]\n\n") and body.count(b"w") == TOKENS  # untouched
    async with client.get(f"http://127.0.0.1:{llm.admin_port}/metrics") as resp:
        text = await resp.text()
    labels = (("model", "m-8b"), ("pool", "default"))
    got = samples(text, "gateway_")
    ttft = got[("gateway_time_to_first_token_seconds_sum", labels)]
    assert FIRST_S <= ttft < FIRST_S + 0.2
    assert got[("gateway_time_to_first_token_seconds_count", labels)] == 1
    assert got[("gateway_inter_token_seconds_count", labels)] == TOKENS - 1
    gaps = got[("gateway_inter_token_seconds_sum", labels)]
    assert (TOKENS - 1) * GAP_S * 0.9 <= gaps < (TOKENS - 1) * GAP_S + 0.15
    assert got[("gateway_completion_tokens_total", labels)] == TOKENS
    assert got[("gateway_prompt_tokens_total", labels)] == 40
    assert got[("gateway_cached_prompt_tokens_total", labels)] == 32
    assert got[("gateway_output_tokens_per_second_count", labels)] == 1
    # what peak_ewma learnt is the time to the first token: the head came at once
    (estimate,) = [v for (n, _), v in got.items() if n.startswith("gateway_replica_latency_est")]
    assert estimate >= FIRST_S
    (line,) = [r for r in caplog.records if r.getMessage() == "request"]
    assert line.model == "m-8b" and line.completion_tokens == TOKENS  # type: ignore[attr-defined]
    assert line.ttft_ms >= FIRST_S * 1000 and line.prompt_tokens == 40  # type: ignore[attr-defined]


async def test_a_whole_answer_is_counted_from_its_usage(llm, client) -> None:  # type: ignore[no-untyped-def]
    await chat(client, llm, stream=False)
    async with client.get(f"http://127.0.0.1:{llm.admin_port}/metrics") as resp:
        got = samples(await resp.text(), "gateway_")
    labels = (("model", "m-8b"), ("pool", "default"))
    assert got[("gateway_completion_tokens_total", labels)] == TOKENS
    assert got[("gateway_prompt_tokens_total", labels)] == 40
    assert ("gateway_time_to_first_token_seconds_count", labels) not in got  # not streamed
