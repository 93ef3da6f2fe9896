"""Token accounting of LLM answers: streamed event by event, cut anywhere, and whole."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.dataplane.tokens import MAX_LINE, EventStream, Tokens, is_event_stream, whole_answer


def event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def delta(content: str | None, role: str | None = None) -> bytes:
    d = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    return event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d}]})


USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 8}}
# a chat stream as vLLM sends it: role first (no text), tokens, usage last, [DONE]
CHAT = [
    delta("", role="assistant"), delta("Hello"), delta(" there"), delta("!"),
    event({"choices": [], "usage": USAGE}), b"data: [DONE]\n\n",
]  # fmt: skip


def feed(chunks: list[bytes], times: list[float]) -> tuple[Tokens, list[float]]:
    gaps: list[float] = []
    stream = EventStream(gaps.append)
    for chunk, now in zip(chunks, times, strict=True):
        stream.feed(chunk, now)
    return stream.tokens, gaps


def test_the_first_token_is_the_first_event_with_text_and_usage_corrects_the_count() -> None:
    tokens, gaps = feed(CHAT, [0.1, 0.5, 0.6, 0.8, 0.9, 0.9])
    assert (tokens.first_at, tokens.last_at, tokens.events) == (0.5, 0.8, 3)
    assert gaps == pytest.approx([0.1, 0.2])
    assert (tokens.prompt, tokens.completion, tokens.cached, tokens.output) == (12, 3, 8, 3)
    assert tokens.decode_rate() == pytest.approx(2 / 0.3)


@pytest.mark.parametrize("cut", [1, 3, 7, 16, 50])
def test_events_cut_anywhere_read_the_same(cut: int) -> None:
    data = b"".join(CHAT)
    pieces = [data[i : i + cut] for i in range(0, len(data), cut)]
    tokens, gaps = feed(pieces, [float(i) for i in range(len(pieces))])
    assert tokens.events == 3 and tokens.completion == 3 and len(gaps) == 2


@pytest.mark.parametrize(
    ("chunks", "events", "completion"),
    [
        # a completion (not chat) stream, no usage: the events are the count
        ([event({"choices": [{"text": "a"}]}), event({"choices": [{"text": "b"}]})], 2, None),
        # a reasoning model's thinking counts as output
        ([event({"choices": [{"delta": {"reasoning_content": "hm"}}]})], 1, None),
        # CRLF line ends, comments, other fields, junk and non-objects are passed over
        ([b': keep-alive\r\n\r\nevent: x\r\ndata: {"choices":[{"text":"a"}]}\r\n\r\n'], 1, None),
        ([b"data: {not json\n\n", b"data: [1, 2]\n\n", b"data: \n\n", b"id: 4\n\n"], 0, None),
        ([event({"choices": "x", "usage": {"completion_tokens": "9"}})], 0, None),
        ([event({"choices": [7, {"delta": "x"}], "usage": {"completion_tokens": -1}})], 0, None),
        ([event({"choices": [], "usage": {"completion_tokens": True}})], 0, None),
    ],
)
def test_what_counts_as_a_token(chunks: list[bytes], events: int, completion: int | None) -> None:
    tokens, _ = feed(chunks, [0.0] * len(chunks))
    assert (tokens.events, tokens.completion) == (events, completion)
    assert tokens.output == events


def test_a_line_past_the_bound_stops_the_accounting_only() -> None:
    stream = EventStream(lambda gap: None)
    stream.feed(delta("a"), 0.0)
    stream.feed(b"data: " + b"x" * MAX_LINE, 1.0)
    stream.feed(b"\n\n" + delta("b"), 2.0)
    assert stream.tokens.events == 1


def test_whole_answers_and_content_types() -> None:
    body = {"choices": [{"message": {"content": "hi"}}], "usage": USAGE}
    tokens = whole_answer(orjson.dumps(body))
    assert (tokens.prompt, tokens.output, tokens.cached, tokens.first_at) == (12, 3, 8, None)
    assert whole_answer(b"<html>").output == 0 and whole_answer(b"[]").prompt is None
    assert tokens.decode_rate() is None
    assert is_event_stream([("Content-Type", "text/event-stream; charset=utf-8")])
    assert not is_event_stream([("content-type", "application/json")])
    assert not is_event_stream([])
