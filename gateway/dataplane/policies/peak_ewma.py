"""peak_ewma, the default policy: response-time weighting by each replica's learnt speed
and its in-flight count over its slots (the whole rule in ``PeakEwma``'s docstring)."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.dataplane.policies.choice import (
    Clock,
    Rotation,
    full_scan,
    two_choices,
)
from gateway.dataplane.replica import Replica

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

TYPICAL_SAMPLES = 256
"""About how many recent successful samples, from any replica, the pool's typical latency
averages: what an unmeasured replica costs, and where an idle one's estimate relaxes to."""


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
        self.turns = Rotation(rng)
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
            chosen = full_scan(candidates, cost, self.turns)
        else:
            chosen = two_choices(candidates, cost, self.rng)
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
