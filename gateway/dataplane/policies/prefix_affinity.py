"""prefix_affinity: prefix-cache-aware routing for LLM engines, with a load guard."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.dataplane.policies.choice import Clock, Rotation, full_frees_sooner, full_scan
from gateway.dataplane.prefix import DEFAULT_CAPACITY, PrefixIndex
from gateway.dataplane.replica import Replica, engine_queues, fresh_engine

BALANCE, SLACK = 1.5, 16
"""prefix_affinity considers only replicas with at most BALANCE x the least load + SLACK:
an LLM engine runs many sequences side by side, and one more in its batch costs far less
than prefilling a conversation's history again elsewhere (a tight band, 1.25 x + 2, lost
a fifth of the cache hits on ``llm-chat``); an engine that queues is passed over anyway."""
MIN_MATCH, MIN_MATCH_BLOCKS, MATCH_TIE = 0.1, 2, 2
"""prefix_affinity: a match counts from this share of the prompt and this many blocks;
matches within MATCH_TIE blocks of the best tie (cut points apart, the same prefix)."""


class PrefixAffinity:
    """Prefix-cache-aware routing for LLM engines: a request goes where its prompt's
    prefix was sent lately (``prefix.PrefixIndex``: what that engine likely still has
    cached, so it prefills less and answers the first token sooner), as long as load
    allows; else to the least loaded replica, as least-connections would.

    * **Load** is what the gateway has in flight on a replica, or what the engine says it
      holds (running + waiting, from its scraped ``/metrics``, ``Replica.engine``) when
      that is more and no older than ``replica.ENGINE_FRESH_S``: other clients may share it.
    * **Load guard.** A replica whose engine queues requests (waiting > 0) is passed
      over while another has none; and only replicas within ``BALANCE`` x the least
      load + ``SLACK`` are considered at all, so a hot prefix (one popular system prompt)
      spreads over the pool as load grows instead of piling onto one replica.
    * **Minimum match.** A match below ``MIN_MATCH`` of the prompt's blocks (or under
      ``MIN_MATCH_BLOCKS``) counts for nothing; matches within ``MATCH_TIE`` blocks of
      the best one tie, and load decides among them (then turns): a shared system prompt
      that every replica holds sends no one anywhere in particular.
    * Every prompt sent is recorded in the chosen replica's index, which holds no more
      than the engine's KV cache does where it says; a replica that leaves is forgotten
      with its index. A request without a prompt is routed by load alone.
    """

    reads_prompt = True

    def __init__(self, *, clock: Clock, rng: random.Random, capacity: int = DEFAULT_CAPACITY):
        self.clock = clock
        self.index = PrefixIndex(capacity)
        self.turns = Rotation(rng)

    def load(self, replica: Replica, now: float) -> float:
        engine = fresh_engine(replica, now)
        if engine is None:
            return replica.inflight
        return max(replica.inflight, engine.running + engine.waiting)

    def pick(
        self,
        candidates: Sequence[Replica],
        full: Sequence[Replica] = (),
        ahead: int = 0,
        prompt: Sequence[int] = (),
    ) -> Replica | None:
        if not candidates:
            return None
        now = self.clock()
        loads = {r.id: self.load(r, now) for r in candidates}
        open_ = [r for r in candidates if not engine_queues(r, now)] or candidates
        floor = min(loads[r.id] for r in open_)
        band = [r for r in open_ if loads[r.id] <= floor * BALANCE + SLACK]
        if prompt:
            matched = {r.id: self.index.match(r.id, prompt) for r in band}
            best = max(matched.values())
            if best >= max(MIN_MATCH_BLOCKS, MIN_MATCH * len(prompt)):
                band = [r for r in band if matched[r.id] >= best - MATCH_TIE]
        chosen = full_scan(band, lambda r: loads[r.id], self.turns)
        if full_frees_sooner(chosen, full, ahead):
            return None
        kv_tokens = chosen.engine.kv_tokens if chosen.engine is not None else None
        self.index.record(chosen.id, prompt, kv_tokens)
        return chosen

    def on_start(self, replica: Replica) -> None:
        self.turns.started(replica)

    def on_end(self, replica: Replica, latency_s: float, ok: bool) -> None:
        pass

    def forget(self, replica_id: str) -> None:
        self.index.forget(replica_id)
        self.turns.forget(replica_id)
