"""A configurable fake model server: the replica behind every test and benchmark.

It behaves like a GPU model server as seen from the network: a fixed number of ``slots``
serve requests at once and the rest wait inside it, first come first served; each request
takes a service time drawn from a distribution; it can fail, hang, start slowly, slow down,
and stream tokens as server-sent events. Every knob can be changed while it runs through
``POST /control``, so one test can turn a healthy replica into a slow or failing one.

Each ``Sim`` is one replica with its own settings, slots, statistics and random generator;
``make_app`` wraps it in an aiohttp application. It imports only aiohttp and orjson, so the
backend image does not need the gateway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

DISTRIBUTIONS = ("const", "exp", "lognormal", "bimodal", "pareto")
BIMODAL_SHORT = 1 / 1.9  # 90 % take this and 10 % ten times it: a mean of 1
PARETO_ALPHA = 2.0  # a heavy tail: finite mean, infinite variance
PARETO_SCALE = (PARETO_ALPHA - 1) / PARETO_ALPHA  # the smallest factor; a mean of 1


@dataclass(slots=True)
class Settings:
    """What the replica does; every field is also a key of ``/control``."""

    service_ms: float = 20.0  # mean service time
    distribution: str = "const"  # one of DISTRIBUTIONS
    sigma: float = 0.5  # lognormal shape
    slots: int = 4  # requests served at once; the rest queue FIFO
    slowdown: float = 1.0  # multiplies every service time and token gap
    fail_rate: float = 0.0  # probability of an instant 500
    hang: bool = False  # accept requests and answer none of them while set
    startup_delay_s: float = 0.0  # /health answers 503 until this long after start
    tokens: int = 8  # SSE events per streamed answer
    token_ms: float | None = None  # gap between tokens; None = service_ms / tokens
    seed: int | None = None  # seeds the replica's random generator when set

    def update(self, changes: dict[str, Any]) -> None:
        """Apply ``changes`` all or nothing; raises ValueError naming the bad key."""
        new = dataclasses.replace(self)
        for key, value in changes.items():
            if key not in Settings.__dataclass_fields__:
                raise ValueError(f"{key}: unknown setting")
            setattr(new, key, _coerce(key, value))
        new.check()
        for key in changes:
            setattr(self, key, getattr(new, key))

    def check(self) -> None:
        problems = [
            ("service_ms", self.service_ms < 0, "must be >= 0"),
            ("distribution", self.distribution not in DISTRIBUTIONS, f"one of {DISTRIBUTIONS}"),
            ("sigma", self.sigma < 0, "must be >= 0"),
            ("slots", self.slots < 1, "must be >= 1"),
            ("slowdown", self.slowdown < 0, "must be >= 0"),
            ("fail_rate", not 0 <= self.fail_rate <= 1, "must be in [0, 1]"),
            ("startup_delay_s", self.startup_delay_s < 0, "must be >= 0"),
            ("tokens", self.tokens < 1, "must be >= 1"),
            ("token_ms", self.token_ms is not None and self.token_ms < 0, "must be >= 0"),
        ]
        for key, bad, message in problems:
            if bad:
                raise ValueError(f"{key}: {message}")

    def token_gap_ms(self) -> float:
        return self.service_ms / self.tokens if self.token_ms is None else self.token_ms


_TYPES: dict[str, type] = {"distribution": str, "hang": bool, "slots": int, "tokens": int}
_OPTIONAL = ("token_ms", "seed")


def _coerce(key: str, value: Any) -> Any:
    """Check a JSON value against the field's type; booleans are not numbers here."""
    if value is None and key in _OPTIONAL:
        return None
    want = int if key == "seed" else _TYPES.get(key, float)
    if want is bool or want is str:
        ok = isinstance(value, want)
    else:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = number and (want is float or float(value).is_integer())
    if not ok:
        raise ValueError(f"{key}: expected {want.__name__}, got {value!r}")
    return want(value)


class Slots:
    """A FIFO semaphore whose capacity can change while requests wait (``/control``)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.busy < self.capacity and not self._waiters:
            self.busy += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() counted us as busy before waking us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # woken and cancelled at once: pass the slot on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.busy -= 1
        self._wake()

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.busy < self.capacity:
            self.busy += 1
            self._waiters.popleft().set_result(None)


class Sim:
    """One simulated replica: settings, slots, counters, and the request handlers."""

    def __init__(self, name: str, settings: Settings | None = None) -> None:
        self.name = name
        self.settings = settings or Settings()
        self.settings.check()
        self.rng = random.Random(self.settings.seed)
        self.slots = Slots(self.settings.slots)
        self.started = time.monotonic()
        self.unhang = asyncio.Event()  # set while `hang` is off: hung requests go on
        if not self.settings.hang:
            self.unhang.set()
        self.stats = {"requests": 0, "served": 0, "failures": 0, "in_flight": 0, "peak_busy": 0}

    def service_s(self) -> float:
        """One service time in seconds: the mean scaled by a mean-1 random factor."""
        s = self.settings
        return s.service_ms * s.slowdown * self._factor() / 1000

    def _factor(self) -> float:
        s = self.settings
        if s.distribution == "exp":
            return self.rng.expovariate(1.0)
        if s.distribution == "lognormal":
            return self.rng.lognormvariate(-s.sigma * s.sigma / 2, s.sigma)
        if s.distribution == "bimodal":  # a mix of short and long requests
            return BIMODAL_SHORT * (10 if self.rng.random() < 0.1 else 1)
        if s.distribution == "pareto":  # inverse transform of a uniform in (0, 1]
            return PARETO_SCALE / math.pow(1.0 - self.rng.random(), 1 / PARETO_ALPHA)
        return 1.0

    async def predict(self, request: web.Request) -> web.StreamResponse:
        """Fail (``fail_rate``), hang (``hang``), or wait for a slot and answer: JSON after
        one service time, or a token stream. The answer echoes the body's ``inputs``."""
        body = await request.read()
        data = _parse(body)
        self.stats["requests"] += 1
        headers = {"X-Replica": self.name}
        if self.settings.fail_rate and self.rng.random() < self.settings.fail_rate:
            self.stats["failures"] += 1
            error = orjson.dumps({"replica": self.name, "error": "injected failure"})
            return web.Response(status=500, body=error, headers=headers, content_type=_JSON)
        self.stats["in_flight"] += 1
        try:
            while self.settings.hang:
                await self.unhang.wait()
            await self.slots.acquire()
            try:
                self.stats["peak_busy"] = max(self.stats["peak_busy"], self.slots.busy)
                if request.query.get("stream") in ("1", "true") or data.get("stream") is True:
                    return await self._stream(request, headers)
                service = self.service_s()
                await asyncio.sleep(service)
            finally:
                self.slots.release()
        finally:
            self.stats["in_flight"] -= 1
        self.stats["served"] += 1
        output = data["inputs"] if "inputs" in data else {"bytes": len(body)}
        answer = {"replica": self.name, "output": output, "service_ms": service * 1000}
        return web.Response(body=orjson.dumps(answer), headers=headers, content_type=_JSON)

    async def _stream(self, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        """Send ``tokens`` events, each one gap after the previous (the first after one gap,
        like a prefill), then ``[DONE]``; each is written as soon as it is produced."""
        s = self.settings
        gap = s.token_gap_ms() * s.slowdown * self._factor() / 1000
        response = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for i in range(s.tokens):
            await asyncio.sleep(gap)
            await response.write(b"data: " + orjson.dumps({"token": i}) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.stats["served"] += 1
        return response

    async def health(self, request: web.Request) -> web.Response:
        ready = time.monotonic() - self.started >= self.settings.startup_delay_s
        status = {"status": "ok" if ready else "starting", "replica": self.name}
        return _json(status, 200 if ready else 503)

    async def get_stats(self, request: web.Request) -> web.Response:
        return _json({**self.stats, "busy": self.slots.busy, "queued": self.slots.queued})

    async def get_control(self, request: web.Request) -> web.Response:
        return _json(dataclasses.asdict(self.settings))

    async def post_control(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object")
            self.settings.update(changes)
        except ValueError as exc:  # orjson's decode error is one too
            return _json({"error": str(exc)}, 400)
        self.apply(changes)
        return _json(dataclasses.asdict(self.settings))

    def apply(self, changes: dict[str, Any]) -> None:
        """Carry changed settings over to the live parts: slots, hung requests, the RNG."""
        self.slots.resize(self.settings.slots)
        if self.settings.hang:
            self.unhang.clear()
        else:
            self.unhang.set()  # requests hung so far are served now
        if "seed" in changes:
            self.rng.seed(self.settings.seed)


SIM_KEY = web.AppKey("sim", Sim)
_JSON = "application/json"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=_JSON)


def _parse(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or an empty one: any body is accepted."""
    try:
        data = orjson.loads(body) if body.startswith(b"{") else None
    except orjson.JSONDecodeError:
        data = None
    return data if isinstance(data, dict) else {}


def make_app(sim: Sim) -> web.Application:
    """The HTTP face of one replica."""
    app = web.Application()
    app.router.add_post("/predict", sim.predict)
    app.router.add_get("/health", sim.health)
    app.router.add_get("/stats", sim.get_stats)
    app.router.add_get("/control", sim.get_control)
    app.router.add_post("/control", sim.post_control)
    app[SIM_KEY] = sim
    return app
