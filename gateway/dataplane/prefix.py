"""Prompt prefixes as the gateway sees them: chained block hashes, and per replica an index
of the blocks recently sent there, which stands for what its engine holds in its prefix
(KV) cache.

An engine caches a prompt by blocks of tokens, each block's key chaining the keys before
it, so a block is reused only when the whole prefix up to it is the same. The gateway has
no tokenizer: it cuts the prompt's UTF-8 text, rendered deterministically (chat messages
as role and content, in order), into ``BLOCK_BYTES`` pieces (about 16 tokens of English,
vLLM's default block) and chains their hashes the same way. The match of a prompt on a
replica is then the number of its leading blocks in that replica's index: where an
engine would find the same prefix cached, up to the difference of cut points.

An index holds at most as many blocks per replica as its engine's KV cache holds tokens
over ``BLOCK_TOKENS`` (where the engine says, ``EngineLoad.kv_tokens``; else
``capacity``), least recently sent evicted first, as an engine evicts under KV pressure:
an index that believes an engine holds more than it can routes to prefixes long evicted.
It forgets a replica that leaves (a restarted engine starts cold). Pure: no clock, no
I/O; hashes are Python's (salted per process, which is all an in-process index needs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

BLOCK_BYTES = 64  # ~16 tokens of English at ~4 bytes a token
BLOCK_TOKENS = 16  # what a block stands for, against an engine's KV size in tokens
MAX_BLOCKS = 4096  # a prompt's first 256 KiB decide; the rest costs hashing for nothing
DEFAULT_CAPACITY = 32768  # blocks per replica (~0.5 M tokens) while its KV size is unknown


def parse_body(body: bytes) -> Any:
    """The request's JSON, or None when it is none."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def prompt_blocks(request: Any) -> tuple[int, ...]:
    """The chained block hashes of an OpenAI request's prompt (chat ``messages`` or a
    completion's ``prompt``); () when it has neither. A last partial block counts."""
    text = render(request)
    if not text:
        return ()
    data = text.encode("utf-8", "surrogatepass")[: BLOCK_BYTES * MAX_BLOCKS]
    blocks, key = [], 0
    for start in range(0, len(data), BLOCK_BYTES):
        key = hash((key, data[start : start + BLOCK_BYTES]))
        blocks.append(key)
    return tuple(blocks)


def render(request: Any) -> str:
    """The prompt as one string: each message's role and text, in order (a
    conversation's turns render to a growing prefix), or the completion's prompt."""
    if not isinstance(request, dict):
        return ""
    messages = request.get("messages")
    if isinstance(messages, list):
        return "".join(
            f"\x1e{m.get('role')}\x1f{_text(m.get('content'))}"
            for m in messages
            if isinstance(m, dict)
        )
    prompt = request.get("prompt")
    if isinstance(prompt, list):  # a batch of prompts, or token ids: their first one decides
        prompt = prompt[0] if prompt else ""
    return prompt if isinstance(prompt, str) else ""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # parts: text, or images and the like by their reference
        return "".join(
            p.get("text") or str(p.get("image_url") or "") for p in content if isinstance(p, dict)
        )
    return ""


class PrefixIndex:
    """Per replica, the blocks recently sent to it, in least-recently-sent order."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._blocks: dict[str, OrderedDict[int, None]] = {}

    def match(self, replica_id: str, blocks: Sequence[int]) -> int:
        """How many leading ``blocks`` the replica has."""
        held = self._blocks.get(replica_id)
        if not held:
            return 0
        n = 0
        for key in blocks:
            if key not in held:
                break
            n += 1
        return n

    def record(
        self, replica_id: str, blocks: Sequence[int], kv_tokens: float | None = None
    ) -> None:
        """``blocks`` were sent to the replica: they are its most recent now, the first
        ones most of all, so that eviction takes a prompt's tail before its prefix (as
        vLLM frees a sequence's blocks), never the prefix the rest hangs on. It keeps
        what an engine of ``kv_tokens`` holds (None: unknown, ``capacity``)."""
        held = self._blocks.setdefault(replica_id, OrderedDict())
        for key in reversed(blocks):
            held[key] = None
            held.move_to_end(key)
        limit = self.capacity if kv_tokens is None else max(1, int(kv_tokens // BLOCK_TOKENS))
        while len(held) > limit:
            held.popitem(last=False)

    def forget(self, replica_id: str) -> None:
        self._blocks.pop(replica_id, None)

    def size(self, replica_id: str) -> int:
        return len(self._blocks.get(replica_id, ()))
