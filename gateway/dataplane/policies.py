"""Routing policies: which eligible replica gets the next request.

The pool calls a policy on the event loop thread, for every attempt::

    r = policy.pick(candidates, full, ahead, prompt)  # eligible replicas; None: none, or wait
    policy.on_start(r)                   # after the pool incremented r.inflight
    policy.on_end(r, latency_s, ok)      # after it decremented it; latency = time to first byte
    policy.forget(replica_id)            # the replica left the pool

Invariants every policy keeps:

* ``pick`` returns one of ``candidates``, or None for an empty sequence or (peak_ewma and
  least_connections) when waiting for one of ``full`` (routable replicas at their limit,
  with ``ahead`` requests queued before this one) is cheaper; it never writes to a
  replica: the pool alone owns ``inflight``, ``draining`` and ``cap`` (its limit).
* Routing state lives here, keyed by ``Replica.id``, created lazily (any replica may show up
  at any time) and dropped by ``forget``, so it never outlives the replica.
* The module is pure: time (``clock``, monotonic seconds) and randomness (``rng``) are
  injected, which keeps the logic deterministic under test.
* Equally cheap replicas take turns (``_Rotation``: the least recently started first, as
  HAProxy's leastconn rotates within a load level), so a burst of picks spreads evenly;
  replicas never started yet are taken in random order, so several gateways do not all
  pile onto the first one.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.dataplane.prefix import DEFAULT_CAPACITY, PrefixIndex
from gateway.dataplane.replica import Replica, engine_queues, fresh_engine

Clock = Callable[[], float]

FULL_SCAN_MAX = 16
"""peak_ewma scans every candidate up to this many (the few-replicas GPU case, where two
random choices often miss the one idle replica); above it, power of two choices."""

PENALTY_FACTOR = 2.0
"""A failure counts as at least this multiple of the replica's typical successful latency."""
LOG_PENALTY_FACTOR = math.log(PENALTY_FACTOR)

ALPHA = 1.0 / 16
"""peak_ewma: the weight of each new answer in a replica's estimate (about the last 16)."""

Z_NOISE = 5.0
"""peak_ewma: estimates closer than this many standard errors of their difference tie."""
NOISE_SCALE = ALPHA / (2.0 - ALPHA)
"""The variance of an EWMA with weight ALPHA, as a share of its samples' variance."""
LOG_WAIT_OVER = math.log(4.0)
"""peak_ewma waits for a full replica only rather than take one this many times slower:
estimates move with what the replicas were sent, and waiting while a replica that is
merely 2-3x slower idles costs more than it saves (the matrix's 90 % load cells)."""
PRIOR_VAR, PRIOR_SAMPLES = 0.5, 4
"""A replica's variance of log latency is taken as PRIOR_VAR (a log-sd of 0.7) worth this
many answers, shrunk toward what it shows as answers come: one fast first answer is not
evidence that a replica is faster than its peers."""
VAR_SAMPLES = 64  # the most answers the measured variance counts as against the prior

BALANCE, SLACK = 1.5, 16
"""prefix_affinity considers only replicas with at most BALANCE x the least load + SLACK:
an LLM engine runs many sequences side by side, and one more in its batch costs far less
than prefilling a conversation's history again elsewhere (a tight band, 1.25 x + 2, lost
a fifth of the cache hits on ``llm-chat``); an engine that queues is passed over anyway."""
MIN_MATCH, MIN_MATCH_BLOCKS, MATCH_TIE = 0.1, 2, 2
"""prefix_affinity: a match counts from this share of the prompt and this many blocks;
matches within MATCH_TIE blocks of the best tie (cut points apart, the same prefix)."""

TYPICAL_SAMPLES = 256
"""About how many recent successful samples, from any replica, the pool's typical latency
averages: what an unmeasured replica costs, and where an idle one's estimate relaxes to."""


class Policy(Protocol):
    reads_prompt: bool  # does ``pick`` use the request's prompt blocks (prefix.py)?

    def pick(
        self,
        candidates: Sequence[Replica],
        full: Sequence[Replica] = (),
        ahead: int = 0,
        prompt: Sequence[int] = (),
    ) -> Replica | None: ...
    def on_start(self, replica: Replica) -> None: ...
    def on_end(self, replica: Replica, latency_s: float, ok: bool) -> None: ...
    def forget(self, replica_id: str) -> None: ...


class _Rotation:
    """Turns among equals: the least recently started first. Random ties left replicas
    with constant service times unevenly loaded after bursts: the matrix's
    ``const-s4-l70`` p99 was 31.0-31.2 ms with them, 29.0-29.6 with turns (HAProxy 28.9)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._started: dict[str, int] = {}  # replica id -> the start count when last started
        self._count = 0

    def first(self, ties: Sequence[Replica]) -> Replica:
        never = [r for r in ties if r.id not in self._started]
        if never:
            return self.rng.choice(never)
        return min(ties, key=lambda r: self._started[r.id])

    def started(self, replica: Replica) -> None:
        self._count += 1
        self._started[replica.id] = self._count

    def forget(self, replica_id: str) -> None:
        self._started.pop(replica_id, None)


def _full_scan(
    candidates: Sequence[Replica], cost: Callable[[Replica], float], turns: _Rotation
) -> Replica:
    """The cheapest candidate; among equally cheap ones, the one whose turn it is."""
    best, best_cost = [candidates[0]], cost(candidates[0])
    for r in candidates[1:]:
        c = cost(r)
        if c < best_cost:
            best, best_cost = [r], c
        elif c == best_cost:
            best.append(r)
    return best[0] if len(best) == 1 else turns.first(best)


def _two_choices(
    candidates: Sequence[Replica], cost: Callable[[Replica], float], rng: random.Random
) -> Replica:
    """The cheaper of two distinct random candidates. ``sample`` returns them in random
    order, so keeping the first on a tie is a fair coin."""
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(candidates, 2)
    return b if cost(b) < cost(a) else a


def _inflight(replica: Replica) -> float:
    return replica.inflight


def _full_frees_sooner(chosen: Replica, full: Sequence[Replica], ahead: int) -> bool:
    """Has a full replica fewer requests in flight than ``chosen``, counting the queue
    ``ahead`` spread over the full ones? Then waiting for it beats piling onto ``chosen``."""
    return bool(full) and min(r.inflight for r in full) + ahead / len(full) < chosen.inflight


class _Stateless:
    """Shared constructor and no-op hooks for policies that only look at ``inflight``."""

    reads_prompt = False

    def __init__(self, *, clock: Clock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng

    def on_start(self, replica: Replica) -> None:
        pass

    def on_end(self, replica: Replica, latency_s: float, ok: bool) -> None:
        pass

    def forget(self, replica_id: str) -> None:
        pass


class RoundRobin(_Stateless):
    """Baseline only: a counter modulo the number of candidates. When the candidate list
    changes the cycle shifts but stays fair over time; it ignores load and latency."""

    def __init__(self, *, clock: Clock, rng: random.Random) -> None:
        super().__init__(clock=clock, rng=rng)
        self._next = 0

    def pick(
        self,
        candidates: Sequence[Replica],
        full: Sequence[Replica] = (),
        ahead: int = 0,
        prompt: Sequence[int] = (),
    ) -> Replica | None:
        if not candidates:
            return None
        replica = candidates[self._next % len(candidates)]
        self._next += 1
        return replica


class LeastConnections(_Stateless):
    """Fewest requests in flight, by a full scan: with few replicas and long requests (GPUs)
    a sampled choice misses the idle replica too often (Envoy added FULL_SCAN for this).
    Replicas' limits differ (each is learnt): when a ``full`` one has fewer requests in
    flight, the queue ``ahead`` spread over them counted, the request waits for it
    (None) rather than pile onto the one replica whose limit is still high."""

    def __init__(self, *, clock: Clock, rng: random.Random) -> None:
        super().__init__(clock=clock, rng=rng)
        self.turns = _Rotation(rng)

    def on_start(self, replica: Replica) -> None:
        self.turns.started(replica)

    def forget(self, replica_id: str) -> None:
        self.turns.forget(replica_id)

    def pick(
        self,
        candidates: Sequence[Replica],
        full: Sequence[Replica] = (),
        ahead: int = 0,
        prompt: Sequence[int] = (),
    ) -> Replica | None:
        if not candidates:
            return None
        chosen = _full_scan(candidates, _inflight, self.turns)
        return None if _full_frees_sooner(chosen, full, ahead) else chosen


class PowerOfTwoChoices(_Stateless):
    """Least connections over two random candidates: O(1), for large pools."""

    def pick(
        self,
        candidates: Sequence[Replica],
        full: Sequence[Replica] = (),
        ahead: int = 0,
        prompt: Sequence[int] = (),
    ) -> Replica | None:
        return _two_choices(candidates, _inflight, self.rng) if candidates else None


@dataclass(slots=True)
class _Estimate:
    mean: float  # EWMA of log latency (s), failure penalties included
    var: float  # EWMA variance of log latency, successes only: the estimate's noise
    ok_mean: float  # EWMA of log latency of successes only: the base of the penalty
    stamp: float  # clock time of the last update
    n: int = 1  # successful answers so far
    penalised: bool = False  # the last answer was a failure: ``mean`` is its penalty

    def noise2(self) -> float:
        """The squared standard error of ``mean``: its variance shrunk toward a prior
        while few answers were seen, over how many answers it averages."""
        seen = min(self.n, VAR_SAMPLES)
        var = (self.var * seen + PRIOR_VAR * PRIOR_SAMPLES) / (seen + PRIOR_SAMPLES)
        return var * max(NOISE_SCALE, 1.0 / max(self.n, 1))


class PeakEwma:
    """Response-time weighting: cost = speed estimate x (1 + inflight / slots), cheapest
    wins; ``slots`` is how many requests the replica serves side by side (the knee its
    learnt limit came from, or the configured cap).

    * **Estimate.** The pool feeds ``on_end`` the replica's speed: its time-to-first-byte
      over the queueing its in-flight count explains (k requests on c slots take about
      k / c as long), so that the load term is not counted twice, and a replica that was
      sent too much does not look slow once it drained. The estimate is a running mean of
      the log of that, each answer weighing ``ALPHA`` (the first ones their plain mean):
      a mean of logs, so a heavy tail (a lognormal's, Pareto's, a slow mode) moves it
      little, and per answer, so it follows a replica that slows down within a few
      answers. A failure (connect error, timeout, 5xx, 429) is taken at once, as a peak,
      at ``max(latency_s, penalty_s, PENALTY_FACTOR x the success-only estimate)``: a
      replica answering instant 500s looks slow, not fast (Linkerd 11669), and a burst of
      failures does not compound the penalty.
    * **No herding.** Two estimates that differ by less than ``Z_NOISE`` standard errors
      of their difference count as equal: the cheaper one's is used for both, so on a
      pool of like replicas load alone decides, as least-connections does, instead of
      noise sending each burst to whichever replica drew the shortest answers lately.
      A replica's standard error comes from its own variance of log latency, shrunk
      toward a prior (``PRIOR_VAR``) while it has few answers: one fast first answer is
      not evidence. A penalty never ties.
    * **Memory.** At pick time the estimate of a replica that had no answer for a while is
      relaxed toward the pool's typical latency (a mean over about ``TYPICAL_SAMPLES``
      answers from any replica) with time constant ``relax_s``, so a replica shunned for
      being slow or failing is tried again within a second or two and, once it answers
      well, gets its share back. It is tried with one request: while one is on it, its
      estimate is not relaxed (a burst sent to a replica still 5x slower would be the
      pool's p99). A new answer is blended with what pick saw (the relaxed
      estimate) when it is lower, and with the stored estimate when it is not, so one
      answer from a replica that is still slow restores what was known about it. A
      replica with no answers yet costs the typical latency: it gets its share at once
      and is measured.
    * **Load.** The in-flight factor counts busy slots as a share of the replica's slots:
      with one slot it is Finagle's ``(inflight + 1)``; a batching model server answers
      its slots side by side, so a fast replica with 3 of 4 slots busy is still a better
      bet than an idle one 5x slower. When the cheapest candidate is over 4x slower than
      the best (``LOG_WAIT_OVER``) and was measured lately, and a ``full`` replica (at its
      limit) is cheaper even counting the requests queued ``ahead``, ``pick`` returns
      None: waiting in the gateway's queue for it beats a much slower replica with room.
    * Full scan for up to ``FULL_SCAN_MAX`` candidates (ties take turns), power of two
      choices above.
    """

    reads_prompt = False

    def __init__(
        self,
        *,
        clock: Clock,
        rng: random.Random,
        relax_s: float = 1.0,
        default_rtt_s: float = 0.03,
        penalty_s: float = 1.0,
    ) -> None:
        if min(relax_s, default_rtt_s, penalty_s) <= 0:
            raise ValueError("peak_ewma: relax_s, default_rtt_s, penalty_s must be > 0")
        self.clock = clock
        self.rng = rng
        self.relax_s = relax_s
        self.log_penalty = math.log(penalty_s)
        self.turns = _Rotation(rng)
        self._state: dict[str, _Estimate] = {}
        self._typical = math.log(default_rtt_s)  # the pool's typical log latency
        self._measured = False  # has any success been seen (else _typical is the default)

    def estimate(self, replica: Replica) -> float:
        """The latency estimate ``pick`` uses now (seconds), before the inflight factor."""
        return math.exp(self._view(replica, self.clock())[0])

    def _view(self, replica: Replica, now: float) -> tuple[float, float]:
        """(log latency estimate relaxed to ``now``, its squared standard error; inf
        after a failure, whose penalty is no estimate to tie with). While a request is on
        the replica its estimate is not relaxed: that answer will tell."""
        s = self._state.get(replica.id)
        if s is None:
            return self._typical, PRIOR_VAR
        w = 1.0 if replica.inflight else math.exp(-max(now - s.stamp, 0.0) / self.relax_s)
        noise2 = math.inf if s.penalised else s.noise2()  # inf: a penalty never ties
        return self._typical + (s.mean - self._typical) * w, noise2

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
        views = {r.id: self._view(r, now) for r in (*candidates, *full)}
        best_mean, best_noise2 = min(views.values())

        def tied(r: Replica) -> bool:
            mean, noise2 = views[r.id]
            return not math.isinf(noise2) and (
                mean - best_mean <= Z_NOISE * math.sqrt(noise2 + best_noise2)
            )

        ties = {r.id for r in (*candidates, *full) if tied(r)}
        # like replicas share one slot count too (the median of theirs): each one's is
        # learnt, and its noise would otherwise weigh the load as the estimate's did
        tied_slots = [r.slots for r in (*candidates, *full) if r.id in ties]
        slots = statistics.median_low(tied_slots) if tied_slots else 1.0

        def latency(r: Replica) -> float:
            return best_mean if r.id in ties else views[r.id][0]

        def cost(r: Replica) -> float:
            return latency(r) + math.log1p(r.inflight / (slots if r.id in ties else r.slots))

        if len(candidates) <= FULL_SCAN_MAX:
            chosen = _full_scan(candidates, cost, self.turns)
        else:
            chosen = _two_choices(candidates, cost, self.rng)
        if full and latency(chosen) > best_mean + LOG_WAIT_OVER and self._fresh(chosen, now):
            share = ahead / len(full)  # the queue ahead spread over the full replicas
            waiting = min(cost(r) + math.log1p(share / r.slots) for r in full)
            if waiting < cost(chosen):
                return None
        return chosen

    def _fresh(self, replica: Replica, now: float) -> bool:
        """Was ``replica`` measured within ``relax_s``? A stale estimate is no reason to
        wait: the replica is tried instead, and measured."""
        s = self._state.get(replica.id)
        return s is not None and now - s.stamp < self.relax_s

    def on_start(self, replica: Replica) -> None:
        self.turns.started(replica)  # the pool's inflight count is all the cost needs

    def on_end(self, replica: Replica, latency_s: float, ok: bool) -> None:
        now = self.clock()
        x = math.log(max(latency_s, 1e-6))
        s = self._state.get(replica.id)
        if s is None:
            first = x if ok else max(x, self.log_penalty)
            ok_mean = x if ok else self._typical
            s = self._state[replica.id] = _Estimate(first, 0.0, ok_mean, now, int(ok), not ok)
            if ok:
                self._learn_typical(x)
            return
        seen, _ = self._view(replica, now)
        if ok:
            self._learn_typical(x)
            start = seen if x < seen else max(s.mean, seen)
            s.n += 1
            a, d = max(ALPHA, 1.0 / s.n), x - start  # a running mean over the first answers
            s.mean = start + a * d
            s.var = (1.0 - a) * (s.var + a * d * d)
            s.ok_mean += a * (x - s.ok_mean)
            s.penalised = False
        else:
            s.penalised = True
            penalty = max(x, self.log_penalty, LOG_PENALTY_FACTOR + s.ok_mean)
            s.mean = max(seen, penalty)
        s.stamp = now

    def _learn_typical(self, x: float) -> None:
        if not self._measured:
            self._typical, self._measured = x, True
            return
        self._typical += (x - self._typical) / TYPICAL_SAMPLES

    def forget(self, replica_id: str) -> None:
        self._state.pop(replica_id, None)
        self.turns.forget(replica_id)


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
        self.turns = _Rotation(rng)

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
        chosen = _full_scan(band, lambda r: loads[r.id], self.turns)
        if _full_frees_sooner(chosen, full, ahead):
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


POLICIES: dict[str, Callable[..., Policy]] = {
    "round_robin": RoundRobin,
    "least_connections": LeastConnections,
    "p2c": PowerOfTwoChoices,
    "peak_ewma": PeakEwma,
    "prefix_affinity": PrefixAffinity,
}


def make_policy(name: str, *, clock: Clock, rng: random.Random, **params: float) -> Policy:
    """A new policy by its config name; ``params`` go to its constructor (peak_ewma takes
    ``relax_s``, ``default_rtt_s``, ``penalty_s``). Unknown names raise ValueError."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; one of {', '.join(sorted(POLICIES))}") from None
    return factory(clock=clock, rng=rng, **params)
