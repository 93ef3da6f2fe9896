"""Token accounting of LLM answers, read as they pass through to the client.

A streamed completion is a server-sent event stream: ``data: {json}`` lines (blank lines
between events), ending with ``data: [DONE]``. The first event whose choices carry
non-empty text is the first token: a streaming replica sends its response head at once,
so the time to that event, not to the head, is what says how fast it answers (TTFT).
Each later event with text is a token (an engine may pack several into one event: the
count is then corrected from ``usage``, which an OpenAI-compatible engine sends in a last
event when asked, ``stream_options.include_usage``). A whole (non-streamed) answer's
figures come from its body's ``usage`` alone.

Pure: bytes and clock readings in, figures out. A line longer than ``MAX_LINE`` bytes
stops the accounting of that answer, never its relay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

MAX_LINE = 1 << 20  # an event line this long is no completion chunk: stop reading
EVENT_STREAM = "text/event-stream"


@dataclass(slots=True)
class Tokens:
    """What one answer's tokens came to; times in clock seconds, None where not seen."""

    first_at: float | None = None  # the first token's arrival
    last_at: float | None = None  # the last token's
    events: int = 0  # events with text (tokens, unless an engine packed several)
    prompt: int | None = None  # from usage
    completion: int | None = None  # from usage
    cached: int | None = None  # prompt tokens the engine found in its prefix cache

    @property
    def output(self) -> int:
        """Completion tokens: usage's count, else the events counted."""
        return self.completion if self.completion is not None else self.events

    def decode_rate(self) -> float | None:
        """Tokens per second after the first (None: fewer than two tokens, or no time)."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return None
        return (self.output - 1) / (self.last_at - self.first_at) if self.output > 1 else None

    def take_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self.prompt = _count(usage.get("prompt_tokens"), self.prompt)
        self.completion = _count(usage.get("completion_tokens"), self.completion)
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            self.cached = _count(details.get("cached_tokens"), self.cached)


def _count(value: Any, old: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else old


def is_event_stream(headers: list[tuple[str, str]]) -> bool:
    for name, value in headers:
        if name.lower() == "content-type":
            return value.split(";", 1)[0].strip().lower() == EVENT_STREAM
    return False


def whole_answer(body: bytes) -> Tokens:
    """The figures of a non-streamed answer: its ``usage``, if it is JSON with one."""
    tokens = Tokens()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return tokens
    if isinstance(parsed, dict):
        tokens.take_usage(parsed.get("usage"))
    return tokens


class EventStream:
    """Reads a completion's SSE stream chunk by chunk. ``on_gap`` gets each inter-token
    gap (seconds) as it is seen, so a long answer keeps no list of them."""

    __slots__ = ("_gave_up", "_on_gap", "_partial", "tokens")

    def __init__(self, on_gap: Callable[[float], None]) -> None:
        self.tokens = Tokens()
        self._on_gap = on_gap
        self._partial = b""
        self._gave_up = False

    def feed(self, chunk: bytes, now: float) -> None:
        if self._gave_up:
            return
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            self._gave_up, self._partial = True, b""
            return
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip(), now)

    def _event(self, data: bytes, now: float) -> None:
        if not data or data == b"[DONE]":
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if event.get("usage") is not None:
            self.tokens.take_usage(event["usage"])
        if not _has_text(event.get("choices")):
            return
        t = self.tokens
        t.events += 1
        if t.first_at is None:
            t.first_at = now
        elif t.last_at is not None:
            self._on_gap(now - t.last_at)
        t.last_at = now


def _has_text(choices: Any) -> bool:
    """Does any choice carry generated text (chat ``delta.content``, a completion's
    ``text``, or a reasoning model's ``delta.reasoning_content``)?"""
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("reasoning_content")):
            return True
    return False


def access_fields(model: str, ttft_s: float | None, tokens: Tokens) -> dict[str, object]:
    """What the access log line adds for an answer whose tokens were counted."""
    rate = tokens.decode_rate()
    return {
        "model": model,
        "ttft_ms": None if ttft_s is None else round(ttft_s * 1000, 3),
        "prompt_tokens": tokens.prompt,
        "completion_tokens": tokens.output,
        "cached_tokens": tokens.cached,
        "tokens_per_s": None if rate is None else round(rate, 1),
    }
