"""The LLM replica's ``/metrics``, under vLLM's names (V1 engine), in a registry of its own
(several replicas may share one process in tests). Gauges are read from the replica at
scrape time, and so are the prefix cache's counters (the engine keeps them); the others
are fed as requests run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from backends.llm.engine import BLOCK_TOKENS, Engine, Sequence

if TYPE_CHECKING:
    from backends.llm.replica import LlmReplica

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip


class Metrics:
    def __init__(self, model: str, replica: LlmReplica) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        names = ["model_name"]

        def gauge(name: str, doc: str, read: Callable[[], float]) -> None:
            Gauge(name, doc, names, registry=r).labels(model).set_function(read)

        engine = replica.engine
        gauge("vllm:num_requests_running", "Sequences in the batch", lambda: len(engine.running))
        gauge("vllm:num_requests_waiting", "Sequences queued", lambda: len(engine.waiting))
        gauge("vllm:kv_cache_usage_perc", "KV blocks in use, 0-1", lambda: engine.cache.usage)
        gauge("llm_replica_accelerator_memory_bytes", "Accelerator memory held (sim)",
              replica.accelerator_bytes)  # fmt: skip
        r.register(_PrefixCache(model, engine))
        info = ["block_size", "num_gpu_blocks"]  # vLLM's cache config, as labels of a 1
        Gauge("vllm:cache_config_info", "KV cache configuration", info, registry=r).labels(
            str(BLOCK_TOKENS), str(engine.cache.num_blocks)
        ).set(1)
        self._prompt = Counter(
            "vllm:prompt_tokens", "Prompt tokens, finished requests", names, registry=r
        )
        self._generation = Counter("vllm:generation_tokens", "Tokens generated", names, registry=r)
        self._preemptions = Counter("vllm:num_preemptions", "Preemptions", names, registry=r)
        self._ttft = Histogram("vllm:time_to_first_token_seconds", "Arrival to first token",
                               names, registry=r, buckets=TTFT_BUCKETS)  # fmt: skip
        self._itl = Histogram("vllm:inter_token_latency_seconds", "Between two tokens",
                              names, registry=r, buckets=ITL_BUCKETS)  # fmt: skip
        self.model = model

    def token(self, gap_s: float, first: bool) -> None:
        (self._ttft if first else self._itl).labels(self.model).observe(gap_s)
        self._generation.labels(self.model).inc()

    def finished(self, seq: Sequence) -> None:
        m = self.model
        self._prompt.labels(m).inc(seq.prompt_len)

    def preempted(self, n: int) -> None:
        if n:
            self._preemptions.labels(self.model).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PrefixCache:
    """vLLM's prefix-cache counters, in tokens, read from the engine."""

    def __init__(self, model: str, engine: Engine) -> None:
        self.model, self.engine = model, engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, doc, value in (
            ("vllm:prefix_cache_queries", "Prompt tokens looked up", self.engine.queries),
            ("vllm:prefix_cache_hits", "Prompt tokens found cached", self.engine.hits),
        ):
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self.model], value)
            yield family
