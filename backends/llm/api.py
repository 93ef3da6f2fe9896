"""vLLM's OpenAI-compatible HTTP API over an ``LlmReplica``.

``POST /v1/chat/completions`` and ``/v1/completions`` (streamed as SSE ``data:`` chunks
ending in ``data: [DONE]``, or whole), each with ``usage``; ``GET /v1/models``;
``/health``; ``/metrics``; vLLM's sleep mode (``POST /sleep``, ``POST /wake_up``,
``GET /is_sleeping``). Errors have OpenAI's shape: ``{"error": {"message", "type",
"param", "code"}}``. One choice per request (``n`` > 1 is refused).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
from aiohttp import web

from backends.llm import text
from backends.llm.metrics import CONTENT_TYPE
from backends.llm.replica import ApiError, LlmReplica, Settings

_ids = itertools.count(1)
REPLICA = web.AppKey("replica", LlmReplica)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def _parse(request: web.Request, replica: LlmReplica) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body is not JSON", "BadRequestError") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", "BadRequestError")
    model = body.get("model")
    if model not in replica.names:
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", "BadRequestError", "n")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ApiError(
            400, "max_tokens must be a positive integer", "BadRequestError", "max_tokens"
        )
    return body


def _prompt(body: dict[str, Any], chat: bool) -> str:
    try:
        if chat:
            return text.render_chat(body.get("messages"))
    except text.BadMessages as exc:
        raise ApiError(400, str(exc), "BadRequestError", "messages") from None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string", "BadRequestError", "prompt")
    return prompt


def _usage(prompt_tokens: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


async def _complete(request: web.Request, chat: bool) -> web.StreamResponse:
    replica = request.app[REPLICA]
    try:
        body = await _parse(request, replica)
        tokens = text.tokenize(_prompt(body, chat))
        job = await replica.generate(
            tokens, body.get("max_completion_tokens", body.get("max_tokens"))
        )
    except ApiError as exc:
        error = {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.status}
        return _json({"error": error}, exc.status)
    kind = "chat.completion" if chat else "text_completion"
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{next(_ids)}", "created": int(time.time()),
            "model": body["model"]}  # fmt: skip
    words = replica.tokens(job)
    if not body.get("stream"):
        answer = " ".join([w async for w in words])
        choice: dict[str, Any] = {"index": 0, "finish_reason": job.finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": answer}
        else:
            choice["text"] = answer
        usage = _usage(len(tokens), job.seq.generated, job.seq.cached_tokens)
        return _json({**head, "object": kind, "choices": [choice], "usage": usage})

    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                         "Cache-Control": "no-cache"})  # fmt: skip
    await stream.prepare(request)
    chunk_kind = f"{kind}.chunk" if chat else kind

    async def send(choice: dict[str, Any] | None, **extra: Any) -> None:
        event = {**head, "object": chunk_kind, "choices": [choice] if choice else [], **extra}
        await stream.write(b"data: " + orjson.dumps(event) + b"\n\n")

    def piece(content: str, finish: str | None = None) -> dict[str, Any]:
        if chat:
            return {"index": 0, "delta": {"content": content}, "finish_reason": finish}
        return {"index": 0, "text": content, "finish_reason": finish}

    try:
        if chat:
            await send({"index": 0, "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None})  # fmt: skip
        first = True
        async for word in words:
            await send(piece(word if first else f" {word}"))
            first = False
        await send(piece("", job.finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            await send(None, usage=_usage(len(tokens), job.seq.generated, job.seq.cached_tokens))
        await stream.write(b"data: [DONE]\n\n")
        await stream.write_eof()
    except ConnectionError:
        pass  # the client left: its request ends here, and frees its KV blocks
    finally:
        await words.aclose()
    return stream


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat=False)


async def models(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    cards = [{"id": name, "object": "model", "created": int(replica.started), "owned_by": "llm-sim"}
             for name in replica.names]  # fmt: skip
    return _json({"object": "list", "data": cards})


async def health(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    return web.Response(status=200 if replica.loaded else 503)


async def metrics(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    return web.Response(body=replica.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def sleep(request: web.Request) -> web.Response:
    await request.app[REPLICA].sleep()
    return web.Response()


async def wake_up(request: web.Request) -> web.Response:
    await request.app[REPLICA].wake()
    return web.Response()


async def is_sleeping(request: web.Request) -> web.Response:
    return _json({"is_sleeping": request.app[REPLICA].asleep})


def make_app(settings: Settings) -> web.Application:
    app = web.Application()

    async def lifecycle(app: web.Application) -> Any:
        replica = app[REPLICA] = LlmReplica(settings)
        replica.start()
        yield
        await replica.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/sleep", sleep)
    app.router.add_post("/wake_up", wake_up)
    app.router.add_get("/is_sleeping", is_sleeping)
    return app
