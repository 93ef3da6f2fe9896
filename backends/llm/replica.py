"""The LLM-like replica: the engine model in time, with vLLM's lifecycle.

One task steps the engine: each pass sleeps for the time the engine says it takes, then
hands every running request its token, so time to first token is queueing plus the
prefill of what the prefix cache lacks, and the time between tokens grows with the batch.
Requests whose clients leave are cancelled in the engine, freeing their KV blocks.

Lifecycle, as vLLM's: loading (``/health`` 503 for ``startup_delay_s``), serving, and
asleep (``POST /sleep``: new requests wait for the wake-up, the prefix cache is dropped
and the accelerator memory it counts goes to 0; ``POST /wake_up`` takes ``wake_s``).
Requests running when it falls asleep pause until it wakes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from backends.llm import text
from backends.llm.engine import BLOCK_TOKENS, Engine, Sequence, Timing
from backends.llm.metrics import Metrics

KV_BLOCK_BYTES = BLOCK_TOKENS * 128 * 1024  # Llama-3-8B: 32 layers x 8 KV heads x 128 x K,V x 2 B


@dataclass
class Settings:
    model: str = "llama-3-8b"
    aliases: tuple[str, ...] = ()  # more names it answers to (vLLM's --served-model-name)
    num_blocks: int = 2048  # 32 Ki tokens of KV; an H100 holds ~27 Ki blocks (docs)
    max_num_seqs: int = 256
    timing: Timing = field(default_factory=Timing)
    startup_delay_s: float = 0.0
    wake_s: float = 1.0
    weights_bytes: int = 16 * 10**9
    default_max_tokens: int = 64  # the mean of drawn lengths when a request sets none


class ApiError(Exception):
    """An error the API answers in OpenAI's shape."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


@dataclass
class _Request:
    seq: Sequence
    tokens: asyncio.Queue[int | None]
    arrived: float
    finish: str  # "length" when max_tokens was asked for, else "stop"


class LlmReplica:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = Engine(settings.num_blocks, settings.max_num_seqs, settings.timing)
        self.metrics = Metrics(settings.model, self)
        self.started = time.monotonic()
        self.asleep = False
        self._awake = asyncio.Event()
        self._awake.set()
        self._work = asyncio.Event()
        self._requests: dict[int, _Request] = {}
        self._ids = itertools.count(1)
        self._words = dict(zip(text.WORD_IDS, text.WORDS, strict=True))
        self._task: asyncio.Task[None] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.settings.model, *self.settings.aliases)

    @property
    def loaded(self) -> bool:
        return time.monotonic() - self.started >= self.settings.startup_delay_s

    def accelerator_bytes(self) -> int:
        if self.asleep:
            return 0
        return self.settings.weights_bytes + self.settings.num_blocks * KV_BLOCK_BYTES

    # -- the engine loop ---------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _next_token(self, seq: Sequence) -> int:
        return text.WORD_IDS[text.next_word(seq.tokens, seq.generated)]

    async def _run(self) -> None:
        while True:
            await self._awake.wait()
            step = self.engine.step(self._next_token)
            if not step.tokens:
                self._work.clear()
                await self._work.wait()
                continue
            await asyncio.sleep(step.duration_s)
            # a client may have left during the pass: its request is gone, nobody to tell
            for seq, token in step.tokens:
                if (request := self._requests.get(seq.id)) is not None:
                    request.tokens.put_nowait(token)
            for seq in step.finished:
                if (request := self._requests.get(seq.id)) is not None:
                    request.tokens.put_nowait(None)
            self.metrics.preempted(len(step.preempted))

    # -- requests ----------------------------------------------------------------------

    async def generate(self, prompt: list[int], max_tokens: int | None) -> _Request:
        if not self.loaded:
            raise ApiError(503, "the model is still loading", "ServiceUnavailableError")
        await self._awake.wait()
        if max_tokens is None:  # a length the model "chose": 0.5-1.5x the default
            spread = hash(tuple(prompt[-8:])) % (self.settings.default_max_tokens + 1)
            length, finish = self.settings.default_max_tokens // 2 + spread, "stop"
        else:
            length, finish = max_tokens, "length"
        seq = Sequence(next(self._ids), list(prompt), max(length, 1))
        try:
            self.engine.submit(seq)
        except ValueError as exc:
            raise ApiError(400, str(exc), "BadRequestError", "max_tokens") from None
        request = _Request(seq, asyncio.Queue(), time.monotonic(), finish)
        self._requests[seq.id] = request
        self._work.set()
        return request

    async def tokens(self, request: _Request) -> AsyncGenerator[str, None]:
        """The request's generated words, as they come; frees it in the engine at the end
        or when the client left."""
        last, first = request.arrived, True
        try:
            while (token := await request.tokens.get()) is not None:
                now = time.monotonic()
                self.metrics.token(now - last, first)
                last, first = now, False
                yield self._words[token]
        finally:
            self.engine.cancel(request.seq)
            self._requests.pop(request.seq.id, None)
            self.metrics.finished(request.seq)

    async def sleep(self) -> None:
        self.asleep = True
        self._awake.clear()
        self.engine.cache.clear()

    async def wake(self) -> None:
        if self.asleep:
            await asyncio.sleep(self.settings.wake_s)
            self.asleep = False
            self._awake.set()
