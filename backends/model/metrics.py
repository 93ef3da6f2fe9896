"""The model server's Prometheus metrics, in a registry of its own.

Why its own registry: the server can run in-process next to a gateway (tests) or twice in
one process, and the default global registry would refuse the second set of names and mix
in the gateway's. What is measured answers the questions batching raises: how long one
inference call takes (by provider, so CPU and GPU replicas can be told apart), how many
rows each call carried (is batching happening at all?), how many requests are waiting for
a call right now, and the end-to-end time and status of each ``/predict``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# inference calls: tens of microseconds (tiny model, CPU) to tens of milliseconds (GPU, cold)
INFERENCE_BUCKETS = (
    0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
)  # fmt: skip
REQUEST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Every metric the model server exports; ``render()`` is the ``/metrics`` body."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "model_requests", "/predict requests answered, by HTTP status", ["status"], registry=r
        )
        self.request_seconds = Histogram(
            "model_request_seconds", "/predict time in the server: checks, queue, inference",
            buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "model_inference_seconds", "time of one inference call (one batch)",
            ["provider"], buckets=INFERENCE_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "model_batch_size", "rows in one inference call", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "model_queue_depth", "requests waiting for an inference call", registry=r
        )
        self.ready = Gauge("model_ready", "1 once the model is loaded and warmed up", registry=r)
        self.info = Gauge(
            "model_info", "the model being served and the execution provider in use (value 1)",
            ["model", "provider", "batching"], registry=r,
        )  # fmt: skip

    def loaded(self, model: str, provider: str, batching: bool) -> None:
        """Record the model and the provider actually in use, once they are known."""
        self.info.labels(model=model, provider=provider, batching=str(batching).lower()).set(1)
        self.ready.set(1)

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def on_run(self, provider: str) -> Callable[[int, float], None]:
        """The batcher's per-call callback, with the provider label bound once."""
        seconds = self.inference_seconds.labels(provider=provider)

        def record(rows: int, elapsed: float) -> None:
            seconds.observe(elapsed)
            self.batch_size.observe(rows)

        return record

    def answered(self, status: int, elapsed: float) -> None:
        self.requests.labels(status=str(status)).inc()
        self.request_seconds.observe(elapsed)

    def render(self) -> bytes:
        return generate_latest(self.registry)
