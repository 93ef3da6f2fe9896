"""Text and tokens for the LLM replica: a deterministic tokenizer approximation, a chat
template, and the words the replica "generates".

A token is a word or a punctuation mark (``\\w+|[^\\w\\s]``), its id a CRC-32 of its text
over a 128 Ki vocabulary (Llama 3's size): the same text gives the same ids in every
process and on every replica, which is all prefix caching needs. English runs about 1.3
real BPE tokens per word, so counts here are a little low; the benchmarks draw lengths in
these tokens. A generated word tokenizes back to the id it was generated as, so a
conversation's next turn, which sends the answer back, meets it in the prefix cache.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

VOCAB = 128 * 1024
_PIECE = re.compile(r"\w+|[^\w\s]")
_LEXICON = (
    "the of and to in is that it for as with was on be by this are at from or an have not "
    "which but they one all were we there been has more when can will their if would so "
    "model token cache batch prefix block request answer engine replica latency queue"
)
WORDS = _LEXICON.split()


def token_id(piece: str) -> int:
    return zlib.crc32(piece.encode("utf-8", "surrogatepass")) % VOCAB


def tokenize(text: str) -> list[int]:
    return [token_id(piece) for piece in _PIECE.findall(text)]


WORD_IDS = [token_id(w) for w in WORDS]


def next_word(tokens: Sequence[int], generated: int) -> int:
    """The index in ``WORDS`` of the next generated word: a function of the prompt's
    last tokens and the position, as a temperature-0 model's answer is of its prompt."""
    seed = hash(tuple(tokens[-4:])) if generated == 0 else tokens[-1] * 31 + generated
    return seed % len(WORDS)


class BadMessages(ValueError):
    pass


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # parts: only text ones count
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(t, str) for t in texts):
            return "\n".join(str(t) for t in texts)
    raise BadMessages("a message's content must be a string or a list of text parts")


def render_chat(messages: Any) -> str:
    """The prompt for ``messages``, in a Llama-3-like template ending in the assistant's
    turn: a conversation's turns render to one growing prefix."""
    if not isinstance(messages, list) or not messages:
        raise BadMessages("messages must be a non-empty list")
    parts = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadMessages("each message needs a role")
        parts.append(f"<|{m['role']}|>\n{_content(m.get('content', ''))}\n<|end|>\n")
    parts.append("<|assistant|>\n")
    return "".join(parts)
