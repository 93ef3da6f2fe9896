"""The replica: one upstream model-server instance as the data plane sees it.

A replica is plain state. The pool owns the set of replicas and is the only writer of
``inflight``, ``parked``, ``draining``, ``cap`` and ``slots`` (its concurrency limit, learnt or
configured, and the concurrency it was learnt from) and ``probing`` (an attempt outrun
by a hedge runs on: at most one per replica); ``engine`` is the replica's own account of
its load, written only by the engine-signal scraper (None: not scraped, or not yet),
and ``engine_batch`` what the pool learnt from it;
health tracking lives in ``health.ReplicaHealth`` and routing state lives inside each
policy, keyed by replica id, so a replica carries no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateway.dataplane.health import ReplicaHealth


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What an LLM engine's ``/metrics`` said about its load, at ``at`` (monotonic s)."""

    running: float  # sequences in the running batch
    waiting: float  # sequences queued inside the engine
    kv_usage: float | None  # share of the KV cache in use, 0..1 (None: not exported)
    at: float
    kv_tokens: float | None = None  # the KV cache's size in tokens, where the engine says


ENGINE_FRESH_S = 1.0  # an engine's figures older than this are not acted on


def fresh_engine(replica: Replica, now: float) -> EngineLoad | None:
    """The replica's engine figures, if they are recent enough to act on."""
    e = replica.engine
    return e if e is not None and now - e.at <= ENGINE_FRESH_S else None


def engine_queues(replica: Replica, now: float) -> bool:
    """Does the replica's engine say, lately, that it queues requests it cannot run yet?"""
    e = fresh_engine(replica, now)
    return e is not None and e.waiting > 0


ENGINE_BATCH_S = 30.0  # an engine's batch size, as learnt, is kept this long unrenewed
SLOTS_KV = 0.5  # an engine that queues with less of its KV cache in use lacks batch slots


@dataclass(frozen=True, slots=True)
class EngineBatch:
    """The most sequences an engine was seen to run while it also queued for want of a
    batch slot (at ``at``): its ``max_num_seqs``, which its metrics do not say; more
    sent there would wait inside it, first come first served. Queueing with half its KV
    cache or more in use may be for memory, which teaches nothing: how many fit depends
    on the prompts' lengths."""

    size: int
    at: float


def learn_batch(
    known: EngineBatch | None, before: EngineLoad | None, load: EngineLoad
) -> EngineBatch | None:
    """The batch size after a new read ``load`` (``before``: the read before it): two
    reads in a row that queue, the KV cache mostly free, set it (a request that arrived
    during a step waits for the next one: one read says nothing), unless the engine ran
    fewer than a batch seen within ``ENGINE_BATCH_S`` (a dip); a read that runs more
    than it raises it."""
    if known is not None and load.at - known.at > ENGINE_BATCH_S:
        known = None
    running = int(load.running)
    short_of_slots = (
        before is not None
        and before.waiting > 0
        and load.waiting > 0
        and (load.kv_usage is None or load.kv_usage < SLOTS_KV)
    )
    if running >= 1 and (
        (short_of_slots and (known is None or running >= known.size))
        or (known is not None and running > known.size)
    ):
        return EngineBatch(running, load.at)
    return known


@dataclass(eq=False, slots=True)
class Replica:
    id: str
    url: str  # base URL without a trailing slash, e.g. "http://127.0.0.1:9001"
    inflight: int = 0
    parked: int = 0  # of those, answers held up by a client that reads none of it now
    cap: int = 1  # most requests in flight on it; set by the pool
    slots: float = 1.0  # how many it serves side by side (the knee ``cap`` was learnt from)
    sure_slots: float = 1.0  # how many it surely does: the knee once found, else 1
    draining: bool = False
    probing: bool = False
    health: ReplicaHealth = field(default_factory=ReplicaHealth)
    engine: EngineLoad | None = None
    engine_batch: EngineBatch | None = None  # learnt from ``engine`` by the pool
    host: str = field(init=False)  # from url, parsed once: the proxy connects to these
    port: int = field(init=False)
    address: tuple[str, int] = field(init=False)  # (host, port)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "", parts.port or 80
        self.address = (self.host, self.port)

    @property
    def working(self) -> int:
        """The requests in flight that the replica works on: a parked answer waits for
        its client, so it neither counts against the cap nor tells the limit of load."""
        return self.inflight - self.parked

    def __repr__(self) -> str:
        return f"Replica({self.id!r}, inflight={self.inflight})"
