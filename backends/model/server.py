"""The model server's HTTP face: ``/predict``, ``/health``, ``/metrics``, ``/stats``.

The HTTP server starts listening before the model is loaded and answers ``/health`` with
503 until the model is loaded *and* one warm-up inference has run on the inference thread:
the gateway's health checks and the autoscaler's startup wait then see a replica as ready
only when its first real request will not pay for initialisation (seconds with CUDA).
Loading runs in a thread, so ``/health`` keeps answering meanwhile.

``/predict`` checks the body (``inputs.py``: 4xx with the reason, the server carries on),
queues the rows in the batcher, and answers ``{"predictions": [...], "probabilities":
[[...], ...]}``. A full queue is a 503 with ``Retry-After``, which the gateway retries on
another replica; an inference error is a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from backends.model import runtime
from backends.model.batcher import Batcher, QueueFull, Stopped
from backends.model.inputs import BadInput, parse_inputs
from backends.model.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("backends.model")
_JSON = "application/json"


@dataclass
class Settings:
    """How the server runs; each field is a command-line flag of ``python -m backends.model``."""

    model: Path = runtime.DEFAULT_MODEL
    provider: str = "auto"  # auto | cpu | cuda
    batching: bool = True
    max_batch: int = 32  # rows per inference call
    max_wait_ms: float = 2.0  # longest a request waits for its batch to fill
    max_queue: int = 4096  # requests waiting at most; more get 503
    max_rows: int = 1024  # rows in one request at most; more get 413
    intra_op_threads: int = 1
    name: str = "model"  # the X-Replica header


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return web.Response(body=body, status=status, content_type=_JSON, headers=headers)


@dataclass
class ModelServer:
    """One replica: its settings, the model once loaded, the batcher and the metrics."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    model: runtime.Model | None = None
    batcher: Batcher | None = None
    error: str | None = None  # why loading failed
    loading: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    async def load(self) -> None:
        """Load the model in a thread, start the batcher, warm up on its inference thread."""
        s = self.settings
        try:
            model = await asyncio.to_thread(runtime.load, s.model, s.provider, s.intra_op_threads)
            batcher = Batcher(
                model.run,
                max_batch=s.max_batch,
                max_wait_s=s.max_wait_ms / 1000,
                batching=s.batching,
                max_queue=s.max_queue,
                on_run=self.metrics.on_run(model.provider),
            )
            loop = asyncio.get_running_loop()
            warm_s = await loop.run_in_executor(batcher.executor, model.warm_up, s.max_batch)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("model %s failed to load: %s", s.model, self.error)
            raise
        batcher.start()
        self.model, self.batcher = model, batcher
        self.metrics.track_queue(lambda: batcher.queue_depth)
        self.metrics.loaded(model.name, model.provider, s.batching)
        log.info(
            "model %s loaded from %s: provider %s, warm-up %.1f ms, batching %s "
            "(max_batch %d, max_wait_ms %g)",
            model.name, s.model, model.provider, warm_s * 1000,
            "on" if s.batching else "off", s.max_batch, s.max_wait_ms,
        )  # fmt: skip

    async def predict(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        response = await self._predict(request)
        self.metrics.answered(response.status, time.perf_counter() - started)
        return response

    async def _predict(self, request: web.Request) -> web.Response:
        headers = {"X-Replica": self.settings.name}
        if self.model is None or self.batcher is None:
            return self._error(503, self.error or "model not loaded yet", retry=True)
        try:
            rows = parse_inputs(await request.read(), self.model.features, self.settings.max_rows)
        except BadInput as exc:
            return self._error(exc.status, exc.message)
        try:
            labels, probabilities = await self.batcher.submit(rows)
        except QueueFull as exc:
            return self._error(503, f"overloaded: {exc}", retry=True)
        except Stopped as exc:
            return self._error(503, str(exc), retry=True)
        except Exception as exc:
            log.exception("inference failed")
            return self._error(500, f"inference failed: {type(exc).__name__}: {exc}")
        return _json({"predictions": labels, "probabilities": probabilities}, headers=headers)

    def _error(self, status: int, message: str, retry: bool = False) -> web.Response:
        headers = {"X-Replica": self.settings.name}
        if retry:
            headers["Retry-After"] = "1"
        return _json({"error": message, "status": status}, status=status, headers=headers)

    async def health(self, request: web.Request) -> web.Response:
        """200 once ready; 503 while loading or after a failed load, with the reason."""
        if self.model is None or not self.ready:
            state = "failed" if self.error else "loading"
            return _json({"status": state, "error": self.error}, status=503)
        return _json(
            {
                "status": "ok",
                "model": self.model.name,
                "provider": self.model.provider,
                "features": self.model.features,
                "classes": self.model.classes,
                "metadata": self.model.metadata,
                "batching": self.settings.batching,
            }
        )

    async def get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def stats(self, request: web.Request) -> web.Response:
        """Counters for tests and benchmarks: ``runs`` < ``requests`` means batching works."""
        b = self.batcher
        counters = {"runs": 0, "rows": 0, "requests": 0, "largest_batch": 0, "queue_depth": 0}
        if b is not None:
            counters = {
                "runs": b.runs,
                "rows": b.rows,
                "requests": b.requests,
                "largest_batch": b.largest,
                "queue_depth": b.queue_depth,
            }
        settings = {
            k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.settings).items()
        }
        provider = self.model.provider if self.model else None
        return _json({**counters, "ready": self.ready, "provider": provider, "settings": settings})

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: load in the background; stop the batcher at the end,
        after aiohttp has let the requests in flight finish."""
        self.loading = asyncio.create_task(self.load(), name="load-model")
        yield
        if not self.loading.done():
            self.loading.cancel()
        await asyncio.gather(self.loading, return_exceptions=True)
        if self.batcher is not None:
            await self.batcher.stop()


SERVER_KEY = web.AppKey("model_server", ModelServer)


def make_app(server: ModelServer) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/predict", server.predict)
    app.router.add_get("/health", server.health)
    app.router.add_get("/metrics", server.get_metrics)
    app.router.add_get("/stats", server.stats)
    app.cleanup_ctx.append(server.lifecycle)
    app[SERVER_KEY] = server
    return app
