"""Prometheus metrics: the one module that imports prometheus_client.

Counters and histograms are fed by the ``Recorder`` calls the data plane makes; the
gauges (in-flight, queue depth, replica health) come from a ``view.GatewayView`` taken
when Prometheus scrapes, so keeping them costs the request path nothing, and rendering
in a worker thread reads a snapshot, never the live pools. Label values stay in
bounded sets: pool and replica names from the config or the driver, status classes, and
fixed reason words.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.ops.view import GatewayView, Viewable
from gateway.recorder import Recorder

if TYPE_CHECKING:
    from gateway.dataplane.tokens import Tokens

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STARTUP_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
WAKE_BUCKETS = (0.01, 0.025, 0.05, *STARTUP_BUCKETS)  # a paused replica wakes in ms
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)  # fmt: skip
TTFT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10, 20, 40, 80,
)  # fmt: skip
INTER_TOKEN_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2.5,
)  # fmt: skip
TOKEN_RATE_BUCKETS = (1, 2.5, 5, 10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class PrometheusRecorder(Recorder):
    """A ``Recorder`` backed by a private registry (no global state)."""

    def __init__(self, observed: Viewable) -> None:
        self.observed = observed
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Client requests by the replica that answered ('' if none)",
            ["pool", "replica", "code"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "gateway_request_duration_seconds", "Client request latency, queueing included",
            ["pool"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait_s = Histogram(
            "gateway_queue_wait_seconds", "Time requests waited for a free replica slot",
            ["pool"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Streamed LLM answers: from arrival at the gateway to the first token",
            ["pool", "model"], buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.inter_token = Histogram(
            "gateway_inter_token_seconds", "Streamed LLM answers: gaps between tokens",
            ["pool", "model"], buckets=INTER_TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.token_rate = Histogram(
            "gateway_output_tokens_per_second",
            "Streamed LLM answers: tokens per second after the first, per answer",
            ["pool", "model"], buckets=TOKEN_RATE_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "gateway_prompt_tokens", "LLM prompt tokens (from usage)", ["pool", "model"],
            registry=r,
        )  # fmt: skip
        self.cached_tokens = Counter(
            "gateway_cached_prompt_tokens", "LLM prompt tokens the engine had cached (usage)",
            ["pool", "model"], registry=r,
        )  # fmt: skip
        self.completion_tokens = Counter(
            "gateway_completion_tokens", "LLM completion tokens (usage, else counted events)",
            ["pool", "model"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "gateway_retries", "Retried attempts by the failure that caused them",
            ["pool", "reason"], registry=r,
        )  # fmt: skip
        self.retries_denied = Counter(
            "gateway_retries_denied", "Retries refused by the retry budget", ["pool"], registry=r
        )
        self.hedges = Counter(
            "gateway_hedges", "Backup attempts sent for slow requests", ["pool"], registry=r
        )
        self.hedges_won = Counter(
            "gateway_hedges_won", "Backup attempts that answered first", ["pool"], registry=r
        )
        self.rejections = Counter(
            "gateway_rejected", "Requests refused for want of capacity, by reason (queue full, "
            "queue timeout, shed, deadline, cold start full, no replica)",
            ["pool", "reason"], registry=r,
        )  # fmt: skip
        self.client_refusals = Counter(
            "gateway_client_refused", "What client limits refused or cut off, by limit",
            ["reason"], registry=r,
        )  # fmt: skip
        self.ejections = Counter(
            "gateway_ejections", "Passive outlier ejections", ["pool", "replica"], registry=r
        )
        self.health_changes = Counter(
            "gateway_health_transitions", "Active health verdict changes",
            ["pool", "replica", "to"], registry=r,
        )  # fmt: skip
        self.cold_start_waits = Histogram(
            "gateway_cold_start_wait_seconds", "Waits for the first replica of an empty pool",
            ["pool"], buckets=STARTUP_BUCKETS, registry=r,
        )  # fmt: skip
        self.scale_events = Counter(
            "gateway_scale_events", "Replicas started, drained, replaced, demoted to a tier or "
            "woken, by decision reason (or tier)",
            ["pool", "action", "reason"], registry=r,
        )  # fmt: skip
        self.replica_seconds = Counter(
            "gateway_replica_seconds", "Replica-seconds held by the autoscaler's replicas, by "
            "state (starting, ready, draining, and the warm tiers)", ["pool", "state"],
            registry=r,
        )  # fmt: skip
        self.gpu_seconds = Counter(
            "gateway_gpu_seconds", "GPU-seconds held by the autoscaler's replicas, by state",
            ["pool", "state"], registry=r,
        )  # fmt: skip
        self.startup = Histogram(
            "gateway_replica_startup_seconds", "From start to passing the health check",
            ["pool"], buckets=STARTUP_BUCKETS, registry=r,
        )  # fmt: skip
        self.wake = Histogram(
            "gateway_replica_wake_seconds", "From waking a replica held in a warm tier to "
            "passing the health check", ["pool", "tier"], buckets=WAKE_BUCKETS, registry=r,
        )  # fmt: skip
        self.start_failures = Counter(
            "gateway_replica_start_failures", "Replica starts that failed, by reason",
            ["pool", "reason"], registry=r,
        )  # fmt: skip
        self.driver_errors = Counter(
            "gateway_driver_errors", "Failed listings of a pool's replicas (engine away)",
            ["pool"], registry=r,
        )  # fmt: skip
        self.reloads = Counter(
            "gateway_config_reloads", "Config reloads by result (applied, refused)",
            ["result"], registry=r,
        )  # fmt: skip
        self._gauges = _Gauges()
        r.register(self._gauges)
        self._rendering = threading.Lock()  # one scrape at a time reads the gauges' view
        self._children: dict[tuple[str, str, int], Any] = {}

    def request_done(self, pool: str, replica: str, status: int, duration_s: float) -> None:
        key = (pool, replica, status)
        children = self._children.get(key)
        if children is None:  # labels() is a locked dict lookup: cache it off the hot path
            children = (
                self.requests.labels(pool, replica, status_class(status)),
                self.duration.labels(pool),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(duration_s)

    def tokens_done(self, pool: str, model: str, ttft_s: float | None, tokens: Tokens) -> None:
        if ttft_s is not None:
            self.ttft.labels(pool, model).observe(ttft_s)
        rate = tokens.decode_rate()
        if rate is not None:
            self.token_rate.labels(pool, model).observe(rate)
        if tokens.prompt is not None:
            self.prompt_tokens.labels(pool, model).inc(tokens.prompt)
        if tokens.cached is not None:
            self.cached_tokens.labels(pool, model).inc(tokens.cached)
        self.completion_tokens.labels(pool, model).inc(tokens.output)

    def inter_token_observer(self, pool: str, model: str) -> Callable[[float], None]:
        return self.inter_token.labels(pool, model).observe

    def retry(self, pool: str, reason: str) -> None:
        self.retries.labels(pool, reason).inc()

    def retry_denied(self, pool: str) -> None:
        self.retries_denied.labels(pool).inc()

    def hedge(self, pool: str) -> None:
        self.hedges.labels(pool).inc()

    def hedge_won(self, pool: str) -> None:
        self.hedges_won.labels(pool).inc()

    def queue_wait(self, pool: str, wait_s: float) -> None:
        self.queue_wait_s.labels(pool).observe(wait_s)

    def rejected(self, pool: str, reason: str) -> None:
        self.rejections.labels(pool, reason).inc()

    def client_refused(self, reason: str) -> None:
        self.client_refusals.labels(reason).inc()

    def ejection(self, pool: str, replica: str) -> None:
        self.ejections.labels(pool, replica).inc()

    def health_changed(self, pool: str, replica: str, up: bool) -> None:
        self.health_changes.labels(pool, replica, "up" if up else "down").inc()

    def cold_start_wait(self, pool: str, wait_s: float) -> None:
        self.cold_start_waits.labels(pool).observe(wait_s)

    def scale_event(self, pool: str, action: str, reason: str) -> None:
        self.scale_events.labels(pool, action, reason).inc()

    def replica_time(self, pool: str, state: str, replica_s: float, gpu_s: float) -> None:
        self.replica_seconds.labels(pool, state).inc(replica_s)
        if gpu_s:
            self.gpu_seconds.labels(pool, state).inc(gpu_s)

    def replica_ready(self, pool: str, startup_s: float) -> None:
        self.startup.labels(pool).observe(startup_s)

    def replica_woken(self, pool: str, tier: str, wake_s: float) -> None:
        self.wake.labels(pool, tier).observe(wake_s)

    def driver_error(self, pool: str) -> None:
        self.driver_errors.labels(pool).inc()

    def start_failed(self, pool: str, reason: str) -> None:
        self.start_failures.labels(pool, reason).inc()

    def config_reload(self, ok: bool) -> None:
        self.reloads.labels("applied" if ok else "refused").inc()

    def exposition(self, view: GatewayView | None = None) -> bytes:
        """The text format, with the gauges of ``view`` (taken on the event loop; None:
        take one now, which only a caller on the loop may do)."""
        with self._rendering:
            self._gauges.view = view or self.observed.view()
            return generate_latest(self.registry)


class _Gauges(Collector):
    """Scrape-time gauges, from the view ``exposition`` hands over."""

    view: GatewayView | None = None

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        inflight = gauge("gateway_inflight", "Requests in flight", "pool", "replica")
        up = gauge("gateway_replica_up", "Active health verdict (1 up)", "pool", "replica")
        ejected = gauge("gateway_replica_ejected", "1 while ejected", "pool", "replica")
        depth = gauge("gateway_queue_depth", "Requests waiting for a slot", "pool")
        hedge_after = gauge(
            "gateway_hedge_delay_seconds", "The wait for a head after which a request is "
            "hedged (absent while unknown or off)", "pool",
        )  # fmt: skip
        estimate = gauge(
            "gateway_replica_latency_estimate_seconds",
            "peak_ewma's latency estimate, before the in-flight factor", "pool", "replica",
        )  # fmt: skip
        limit = gauge(
            "gateway_replica_concurrency_limit",
            "Most requests in flight on the replica: its learnt limit (or the fixed cap)",
            "pool", "replica",
        )  # fmt: skip
        running = gauge("gateway_replica_engine_running", "Engine signals: requests the "
                        "replica's engine runs", "pool", "replica")  # fmt: skip
        waiting = gauge("gateway_replica_engine_waiting", "Engine signals: requests queued "
                        "inside the engine", "pool", "replica")  # fmt: skip
        kv = gauge("gateway_replica_engine_kv_usage", "Engine signals: share of the KV cache "
                   "in use, 0-1", "pool", "replica")  # fmt: skip
        age = gauge("gateway_replica_engine_age_seconds", "Engine signals: age of the last "
                    "figures read", "pool", "replica")  # fmt: skip
        replicas = gauge("gateway_replicas", "Managed replicas by state", "pool", "state")
        desired = gauge("gateway_replicas_desired", "The autoscaler's decision", "pool")
        panic = gauge("gateway_autoscaler_panic", "1 while in panic mode", "pool")
        wait_p99 = gauge(
            "gateway_queue_wait_p99_seconds", "The p99 wait for a slot: measured (recent "
            "requests), and predicted by the autoscaler's Erlang C model", "pool", "source",
        )  # fmt: skip
        gpus = gauge("gateway_gpus", "GPUs known to the ledger", "state")
        view = self.view
        if view is None:
            return
        for pool in view.pools:
            depth.add_metric([pool.name], pool.queued)
            if pool.hedge_delay_s is not None:
                hedge_after.add_metric([pool.name], pool.hedge_delay_s)
            if pool.wait_p99_s is not None:
                wait_p99.add_metric([pool.name, "measured"], pool.wait_p99_s)
            for r in pool.replicas:
                inflight.add_metric([pool.name, r.id], r.inflight)
                limit.add_metric([pool.name, r.id], r.limit)
                up.add_metric([pool.name, r.id], float(r.up))
                ejected.add_metric([pool.name, r.id], float(r.ejected))
                if r.estimate_s is not None:
                    estimate.add_metric([pool.name, r.id], r.estimate_s)
                if r.engine is not None:
                    running.add_metric([pool.name, r.id], r.engine.running)
                    waiting.add_metric([pool.name, r.id], r.engine.waiting)
                    age.add_metric([pool.name, r.id], r.engine.age_s)
                    if r.engine.kv_usage is not None:
                        kv.add_metric([pool.name, r.id], r.engine.kv_usage)
            scaler = pool.autoscale
            if scaler is not None:
                for state, count in scaler.states:
                    replicas.add_metric([pool.name, state], count)
                if scaler.desired is not None:
                    desired.add_metric([pool.name], scaler.desired)
                    panic.add_metric([pool.name], float(scaler.panic))
                if scaler.predicted_wait_p99_s is not None:
                    wait_p99.add_metric([pool.name, "predicted"], scaler.predicted_wait_p99_s)
        gpus.add_metric(["allocated"], view.gpus_total - view.gpus_free)
        gpus.add_metric(["free"], view.gpus_free)
        yield from (inflight, limit, up, ejected, depth, hedge_after, estimate)
        yield from (running, waiting, kv, age, replicas, desired, panic, wait_p99, gpus)
