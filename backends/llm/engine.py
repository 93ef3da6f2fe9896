"""The engine model of an LLM replica: continuous batching over a paged KV cache with a
block-level prefix cache, stepped without a clock.

``Engine.step()`` is one forward pass: it admits waiting sequences while the batch has
room (``max_num_seqs``) and the cache has blocks, prefills the part of their prompts not
already cached, decodes one token for every running sequence, and returns how long the
pass takes and what it produced. The server sleeps that long and then hands the tokens
out; the tests step it with no clock at all.

Invariants:

* A block is free, held (its hash has a reference count), or cached (count 0, evictable
  in LRU order); ``free + held + cached == num_blocks``.
* Blocks are named by chained hashes of 16 whole tokens, so two sequences share blocks
  exactly as far as their tokens agree from the start, whole blocks only. A sequence's
  last, partial block is its own; it gets its name (and becomes shareable) once full,
  generated tokens included, so the next turn of a chat finds the previous answer cached.
* When a running sequence needs a block and none is free or evictable, the sequence
  admitted last is preempted (vLLM's recompute): its blocks are released, and it waits at
  the head of the queue to be prefilled again, all its tokens so far as its prompt.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

BLOCK_TOKENS = 16  # vLLM's default block size


@dataclass(frozen=True, slots=True)
class Timing:
    """How long a pass takes: ``step_s + per_seq_s x running + prefill_token_s x new
    prompt tokens``. Defaults for an 8B model in BF16 on one H100 (see docs/llm-replica.md
    for where each number comes from)."""

    step_s: float = 0.007
    per_seq_s: float = 0.00005
    prefill_token_s: float = 0.00004

    def pass_s(self, running: int, prefill_tokens: int) -> float:
        return self.step_s + self.per_seq_s * running + self.prefill_token_s * prefill_tokens


@dataclass(slots=True)
class Sequence:
    """One request in the engine: ``tokens`` is its prompt, then what it generated."""

    id: int
    tokens: list[int]
    max_tokens: int
    prompt_len: int = 0
    generated: int = 0
    cached_tokens: int = 0  # of its prompt, found in the cache when first admitted
    admitted: bool = False  # ever: a preempted one is not counted twice
    blocks: list[int] = field(default_factory=list)  # hashes of its full blocks, held
    partial: bool = False  # holds an unnamed block for its last, partial tokens

    def __post_init__(self) -> None:
        self.prompt_len = self.prompt_len or len(self.tokens)

    @property
    def done(self) -> bool:
        return self.generated >= self.max_tokens


def block_hashes(tokens: Seq[int], start: int = 0, parent: int = 0) -> list[int]:
    """The chained hashes of the whole blocks of ``tokens`` from block ``start`` on,
    ``parent`` being the hash of the block before it (0 for none)."""
    hashes = []
    for i in range(start, len(tokens) // BLOCK_TOKENS):
        parent = hash((parent, tuple(tokens[i * BLOCK_TOKENS : (i + 1) * BLOCK_TOKENS])))
        hashes.append(parent)
    return hashes


class BlockCache:
    """The KV cache's blocks: reference counts of held ones, LRU order of cached ones."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")
        self.num_blocks = num_blocks
        self.free = num_blocks
        self.held: dict[int, int] = {}  # hash -> reference count
        self.cached: OrderedDict[int, None] = OrderedDict()  # evictable, oldest first
        self.anonymous = 0  # partial blocks, held by one sequence each

    @property
    def usage(self) -> float:
        """The share of blocks in use by running sequences (vLLM's kv_cache_usage_perc)."""
        return (len(self.held) + self.anonymous) / self.num_blocks

    def hits(self, hashes: Seq[int]) -> int:
        """How many of ``hashes``, from the first, are in the cache (held or cached)."""
        n = 0
        for h in hashes:
            if h not in self.held and h not in self.cached:
                break
            n += 1
        return n

    def room(self) -> int:
        return self.free + len(self.cached)

    def _take(self) -> bool:
        if self.free:
            self.free -= 1
            return True
        if self.cached:
            self.cached.popitem(last=False)  # evict the least recently used
            return True
        return False

    def acquire(self, hashes: Seq[int], partial: bool) -> bool:
        """Hold ``hashes`` and, if ``partial``, one unnamed block; all or nothing."""
        new = sum(1 for h in hashes if h not in self.held and h not in self.cached)
        # blocks being revived from ``cached`` are not evictable room for the new ones
        revived = sum(1 for h in hashes if h in self.cached)
        if new + partial > self.free + len(self.cached) - revived:
            return False
        for h in hashes:
            if h in self.held:
                self.held[h] += 1
            elif h in self.cached:
                del self.cached[h]
                self.held[h] = 1
        for h in hashes:
            if h not in self.held:
                self._take()
                self.held[h] = 1
        if partial:
            self._take()
            self.anonymous += 1
        return True

    def extend(self) -> bool:
        """One more unnamed block for a sequence whose last block just filled."""
        if not self._take():
            return False
        self.anonymous += 1
        return True

    def name(self, h: int) -> None:
        """A sequence's partial block is full: it becomes the block ``h``, shared if
        another sequence already holds or cached the same tokens."""
        self.anonymous -= 1
        if h in self.held:
            self.held[h] += 1
            self.free += 1
        elif h in self.cached:
            del self.cached[h]
            self.held[h] = 1
            self.free += 1
        else:
            self.held[h] = 1

    def release(self, hashes: Seq[int], partial: bool) -> None:
        for h in hashes:
            self.held[h] -= 1
            if not self.held[h]:
                del self.held[h]
                self.cached[h] = None  # most recently used
        if partial:
            self.anonymous -= 1
            self.free += 1

    def clear(self) -> None:
        """Drop every cached block (sleep frees the KV cache); held ones stay."""
        self.free += len(self.cached)
        self.cached.clear()


@dataclass(slots=True)
class Step:
    duration_s: float
    tokens: list[tuple[Sequence, int]]  # (sequence, the token it got), in batch order
    finished: list[Sequence]
    preempted: list[Sequence]


class Engine:
    """``submit`` a sequence, ``step`` until it is done. ``queries`` and ``hits`` count
    prompt tokens, as vLLM's ``prefix_cache_queries_total`` and ``hits_total`` do."""

    def __init__(
        self,
        num_blocks: int,
        max_num_seqs: int = 256,
        timing: Timing | None = None,
    ) -> None:
        if max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        self.cache = BlockCache(num_blocks)
        self.max_num_seqs = max_num_seqs
        self.timing = timing or Timing()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.queries = 0
        self.hits = 0

    def submit(self, seq: Sequence) -> None:
        if -(-(len(seq.tokens) + seq.max_tokens) // BLOCK_TOKENS) > self.cache.num_blocks:
            raise ValueError("the request needs more KV blocks than the cache has")
        self.waiting.append(seq)

    def cancel(self, seq: Sequence) -> None:
        """The client went away: free what it holds."""
        if seq in self.running:
            self.running.remove(seq)
            self.cache.release(seq.blocks, seq.partial)
            seq.blocks, seq.partial = [], False
        elif seq in self.waiting:
            self.waiting.remove(seq)

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    def _admit(self) -> int:
        """Admit from the head of the queue while there is room; prefill tokens."""
        prefill = 0
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hashes = block_hashes(seq.tokens)
            hit = self.cache.hits(hashes)
            partial = len(seq.tokens) % BLOCK_TOKENS != 0
            if not self.cache.acquire(hashes, partial):
                break  # the KV cache is full: it waits (and so does everyone behind it)
            self.waiting.popleft()
            seq.blocks, seq.partial = hashes, partial
            cached = min(hit * BLOCK_TOKENS, len(seq.tokens) - 1)  # the last is recomputed
            if not seq.admitted:
                seq.admitted, seq.cached_tokens = True, cached
                self.queries += seq.prompt_len
                self.hits += min(cached, seq.prompt_len)
            prefill += len(seq.tokens) - cached
            self.running.append(seq)
        return prefill

    def _grow(self, seq: Sequence, preempted: list[Sequence]) -> bool:
        """``seq`` got a token: name its last block once full, or hold a block for a
        token that began one, preempting the sequences admitted last while none is
        left. False: ``seq`` was preempted itself."""
        n = len(seq.tokens)
        if seq.partial and n % BLOCK_TOKENS == 0:
            parent = seq.blocks[-1] if seq.blocks else 0
            (h,) = block_hashes(seq.tokens, n // BLOCK_TOKENS - 1, parent)
            self.cache.name(h)
            seq.blocks.append(h)
            seq.partial = False
        elif not seq.partial and n % BLOCK_TOKENS and not seq.done:
            while not self.cache.extend():
                victim = self.running[-1]
                self._preempt(victim, preempted)
                if victim is seq:
                    return False
            seq.partial = True
        return True

    def _preempt(self, seq: Sequence, preempted: list[Sequence]) -> None:
        self.running.remove(seq)
        self.cache.release(seq.blocks, seq.partial)
        seq.blocks, seq.partial = [], False
        self.waiting.appendleft(seq)
        preempted.append(seq)

    def step(self, next_token: Callable[[Sequence], int]) -> Step:
        """One pass; ``next_token(seq) -> int`` gives each running sequence its token."""
        prefill = self._admit()
        if not self.running:
            return Step(0.0, [], [], [])
        duration = self.timing.pass_s(len(self.running), prefill)
        tokens: list[tuple[Sequence, int]] = []
        finished: list[Sequence] = []
        preempted: list[Sequence] = []
        for seq in list(self.running):
            if seq not in self.running:
                continue  # preempted for a sequence earlier in this pass
            token = next_token(seq)
            seq.tokens.append(token)
            seq.generated += 1
            tokens.append((seq, token))
            if not self._grow(seq, preempted):
                continue
            if seq.done:
                self.running.remove(seq)
                self.cache.release(seq.blocks, seq.partial)
                seq.blocks, seq.partial = [], False
                finished.append(seq)
        return Step(duration, tokens, finished, preempted)
