"""The gateway's configuration: a YAML file validated into frozen pydantic models.

Validation is total and up front: ``load_config`` either returns a complete ``Config`` or
raises ``ConfigError`` listing *every* problem as ``dotted.key.path: message``, so an
operator fixes a file in one pass and a bad file never reaches a running gateway. Unknown
keys are errors too (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

MAX_REPLICAS = 1000  # per pool: past this a typo (or a hostile scale call) would start them
# dataplane.policies has one policy for each name (a test checks it): the config, which
# every part reads, imports none of them
POLICY_NAMES = frozenset(
    {"round_robin", "least_connections", "p2c", "peak_ewma", "prefix_affinity"}
)
INSTANCE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"  # a Docker label value, a file name, a marker


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Model):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)


class ClientLimits(_Model):
    """What one client may cost the gateway (``server.py``); each refusal is counted in
    ``gateway_client_refused_total`` by reason."""

    max_request_line_bytes: int = Field(8 * 1024, gt=0)  # longer request targets get 414
    max_header_bytes: int = Field(64 * 1024, gt=0)  # a larger header block gets 431
    max_header_fields: int = Field(100, gt=0)  # more header fields get 431
    max_connections: int = Field(10_000, gt=0)  # past it the longest idle one is closed, or 503
    max_connections_per_ip: int = Field(0, ge=0)  # 0: no per-address cap
    max_pipelined: int = Field(16, gt=0)  # requests queued on a connection before it is not read
    max_buffered_body_bytes: int = Field(64 * 1024 * 1024, gt=0)  # all bodies held: 503 past it
    header_timeout_s: float = Field(10.0, gt=0)  # a request head must arrive within this
    body_timeout_s: float = Field(30.0, gt=0)  # the longest silence in the middle of a body
    write_timeout_s: float = Field(30.0, gt=0)  # a client that reads nothing this long is cut off
    idle_timeout_s: float = Field(75.0, gt=0)  # a keep-alive connection with no request open


class Admin(_Model):
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)
    # The admin API's bearer token: read from this environment variable, or else from
    # this file. With neither, the admin routes are off (``/metrics`` stays open).
    token_env: str = "GATEWAY_ADMIN_TOKEN"
    token_file: str | None = None


def _absolute(v: str) -> str:
    if not v.startswith("/"):
        raise ValueError("must start with '/'")
    return v


AbsolutePath = Annotated[str, AfterValidator(_absolute)]


class Route(_Model):
    path: AbsolutePath
    pool: str
    # how long its requests may wait for a response head (X-Deadline-Ms overrides):
    # one expected to wait longer is refused at once (admission.py); None: no deadline
    deadline_s: float | None = Field(None, gt=0)
    # OpenAI API routes: requests whose JSON body's ``model`` is this (or an alias) go to
    # ``pool``; a route with the same path and no model takes the others
    model: str | None = Field(None, min_length=1)
    aliases: tuple[str, ...] = ()
    priority: Literal["critical", "standard", "sheddable"] = "standard"  # (priority.py)
    priority_header: bool = False  # may X-Priority raise it (lowering is always allowed)

    @property
    def models(self) -> tuple[str, ...]:
        return (self.model, *self.aliases) if self.model else ()


class Queue(_Model):
    max_size: int = Field(512, ge=0)
    timeout_s: float = Field(10.0, gt=0)
    # a sheddable request arriving with this many waiting already is refused with 429
    sheddable_max_waiting: int = Field(16, ge=0)


class Timeouts(_Model):
    connect_s: float = Field(2.0, gt=0)
    request_s: float = Field(60.0, gt=0)  # deadline for the response head, all attempts together
    per_try_s: float | None = Field(None, gt=0)  # deadline for one attempt's head; None = request_s


class Retries(_Model):
    attempts: int = Field(2, ge=1)  # total tries per request, the first included
    budget_percent: float = Field(20.0, ge=0, le=100)  # retries vs requests, over 10 s
    min_retries_per_s: float = Field(10.0, ge=0)  # allowed on top of the ratio


class Hedging(_Model):
    """A backup attempt on another replica for a request slower than the pool's recent
    (100 - ``max_extra_percent``) percentile of response-head latency, or twice its
    median if later; at most that share of requests is hedged. A hedge is one of
    ``retries.attempts``."""

    enabled: bool = True
    max_extra_percent: float = Field(2.0, gt=0, lt=100)
    min_delay_s: float = Field(0.005, ge=0)  # never hedge sooner than this


class Health(_Model):
    enabled: bool = True
    path: str = "/health"
    interval_s: float = Field(2.0, gt=0)
    timeout_s: float = Field(1.0, gt=0)
    healthy_threshold: int = Field(2, ge=1)
    unhealthy_threshold: int = Field(3, ge=1)


class Outlier(_Model):
    consecutive_failures: int = Field(5, ge=1)
    base_ejection_s: float = Field(10.0, gt=0)
    max_ejection_s: float = Field(300.0, gt=0)
    max_ejected_percent: float = Field(50.0, ge=0, le=100)


class ColdStart(_Model):
    max_waiting: int = Field(256, ge=0)  # requests held while the first replica starts
    timeout_s: float = Field(60.0, gt=0)  # longest such wait, then 503


class Slo(_Model):
    """A latency target the autoscaler sizes the pool for (control/sizing.py)."""

    queue_wait_p99_s: float = Field(gt=0)  # the p99 of the wait for a slot


class Tiers(_Model):
    """Warm tiers for replicas scaled down (control/tiers.py): paused, then stopped
    (docker), then removed."""

    paused_s: float = Field(60.0, ge=0)  # held paused this long (0: not paused)
    # then asleep this long: the engine's sleep mode (vLLM's POST /sleep, /wake_up); 0:
    # not used, as for an engine without one
    asleep_s: float = Field(0.0, ge=0)
    stopped_s: float = Field(600.0, ge=0)  # then held stopped this long (0: not stopped)
    max_warm: int = Field(2, ge=0)  # replicas held in tiers at once, per pool


class Autoscale(_Model):
    driver: Literal["docker", "process"] = "docker"
    image: str = "inference-model:latest"  # backends/Dockerfile.model: the real model server
    command: tuple[str, ...] = ()  # process driver: argv with {port}; docker: CMD override
    port: int = Field(8000, ge=1, le=65535)  # the port a replica listens on inside its container
    env: dict[str, str] = {}
    network: str = "bridge"  # bridge (port published on 127.0.0.1), a named network, or host
    reach: Literal["published", "network"] = "published"  # docker: how the gateway reaches a
    # replica: its port published on 127.0.0.1 (gateway on the host), or its name on
    # ``network`` (gateway in a container on that network, as with docker compose)
    gpus_per_replica: int = Field(0, ge=0)
    gpus: Literal["auto", "none"] | tuple[int | str, ...] = "auto"
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(8, ge=1, le=MAX_REPLICAS)
    target_concurrency: float = Field(4.0, gt=0)  # offered concurrency per replica
    stable_window_s: float = Field(60.0, gt=0)
    panic_window_s: float = Field(6.0, gt=0)
    panic_threshold: float = Field(2.0, ge=1)
    scale_down_delay_s: float = Field(30.0, ge=0)
    # min_replicas 0: the last replica is kept through this percentile of the pool's
    # quiet spells once 10 are known (control/keepalive.py); until then, by the windows
    keep_alive_percentile: float = Field(99.0, ge=50, lt=100)
    keep_alive_s: float | None = Field(None, ge=0)  # a fixed keep-alive instead (Knative's
    # scale-to-zero grace): the last replica goes this long into a quiet spell
    startup_timeout_s: float = Field(120.0, gt=0)
    # a replica's start-up time until one is measured (then the median of the last 16,
    # kept in state_dir): the wait a request on a cold pool is told to expect
    expected_startup_s: float = Field(10.0, gt=0)
    drain_timeout_s: float = Field(30.0, ge=0)
    tick_s: float = Field(1.0, gt=0)  # how often the reconcile loop samples and acts
    cold_start: ColdStart = ColdStart()
    slo: Slo | None = None  # None: sized by target_concurrency alone
    tiers: Tiers | None = None  # None: a replica scaled down is removed
    on_exit: Literal["keep", "stop"] = "keep"  # keep: adopt on restart; stop: drain and remove


class EngineMetrics(_Model):
    """Reading each replica's own account of its load (an LLM engine's ``/metrics``, vLLM
    or SGLang names) for the policies; off by default, since a ``/predict`` server has none."""

    enabled: bool = False
    path: AbsolutePath = "/metrics"
    interval_s: float = Field(0.25, gt=0)
    timeout_s: float = Field(1.0, gt=0)


class Pool(_Model):
    policy: str = "peak_ewma"
    backends: tuple[str, ...] = ()
    max_inflight_per_replica: int = Field(64, ge=1)  # the hard cap on one replica
    concurrency_limit: Literal["auto", "fixed"] = "auto"  # auto: learn each replica's knee
    # under the cap (limits.py); fixed: the cap is the limit
    queue: Queue = Queue()
    timeouts: Timeouts = Timeouts()
    retries: Retries = Retries()
    hedging: Hedging = Hedging()
    health: Health = Health()
    outlier: Outlier = Outlier()
    engine_metrics: EngineMetrics = EngineMetrics()
    autoscale: Autoscale | None = None  # None: the static ``backends`` only

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        if v not in POLICY_NAMES:
            raise ValueError(f"unknown policy {v!r}; one of {', '.join(sorted(POLICY_NAMES))}")
        return v

    @field_validator("backends")
    @classmethod
    def _http_urls(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for url in v:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
                raise ValueError(f"{url!r} is not a base URL like http://host:port")
        urls = tuple(url.rstrip("/") for url in v)
        if len(set(urls)) != len(urls):
            raise ValueError("duplicate backend URL")
        return urls


class Config(_Model):
    listen: Listen = Listen()
    admin: Admin = Admin()
    routes: tuple[Route, ...] = Field(min_length=1)
    pools: dict[str, Pool] = Field(min_length=1)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)  # larger request bodies get 413
    limits: ClientLimits = ClientLimits()
    drain_timeout_s: float = Field(30.0, ge=0)  # SIGTERM: how long in-flight requests may finish
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line
    watch_config: bool = False  # reload when the file changes (SIGHUP and the API always do)
    state_dir: str = "~/.cache/inference-gateway"  # what a restarted gateway must find again
    # The instance id stamped on every replica; only replicas carrying it are adopted or
    # removed. None: a random id made once and kept in state_dir.
    cluster: str | None = Field(None, pattern=INSTANCE_ID)
    # Proxies in front (addresses or CIDRs) whose Forwarded / X-Forwarded-* headers are
    # believed, X-Forwarded-For appended to; from any other peer they are set anew.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, v: Any) -> tuple[IPv4Network | IPv6Network, ...]:
        if not isinstance(v, list | tuple):
            raise ValueError("must be a list of addresses or CIDRs, e.g. [10.0.0.0/8, ::1]")
        bad = [item for item in v if not isinstance(item, str)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an address or CIDR, e.g. 10.0.0.0/8")
        try:
            return tuple(ip_network(item) for item in v)
        except ValueError as exc:  # e.g. "10.0.0.1/8 has host bits set"
            raise ValueError(str(exc)) from None


class ConfigError(Exception):
    """A configuration that must not be used; ``errors`` holds one ``path: message`` each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "missing": "is required",
    "extra_forbidden": "unknown key",
    "too_short": "must not be empty",
}


def _describe(err: Any) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "<root>"
    template = _MESSAGES.get(err["type"])
    message = template.format(**err.get("ctx", {})) if template else err["msg"]
    return f"{path}: {message.removeprefix('Value error, ')}"


def _route_model_errors(routes: tuple[Route, ...]) -> list[str]:
    """Aliases need a model; a name is served once per path; one default per path."""
    errors: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    defaults: set[str] = set()
    for i, route in enumerate(routes):
        if route.aliases and route.model is None:
            errors.append(f"routes.{i}.aliases: need a model to be aliases of")
        if route.model is None:
            if route.path in defaults:
                errors.append(f"routes.{i}: a second route for {route.path} with no model")
            defaults.add(route.path)
        for name in route.models:
            first = seen.setdefault((route.path, name), i)
            if first != i:
                errors.append(f"routes.{i}.model: {name!r} is already routed by routes.{first}")
    return errors


def parse_config(data: Any) -> Config:
    """Validate already-parsed YAML; raises ConfigError with every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(["<root>: must be a mapping"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(e) for e in exc.errors()]) from None
    errors = [
        f"routes.{i}.pool: unknown pool {route.pool!r}"
        for i, route in enumerate(config.routes)
        if route.pool not in config.pools
    ]
    errors += _route_model_errors(config.routes)
    for name, pool in config.pools.items():
        at = f"pools.{name}"
        if pool.outlier.max_ejection_s < pool.outlier.base_ejection_s:
            errors.append(f"{at}.outlier.max_ejection_s: must be >= base_ejection_s")
        scale = pool.autoscale
        if scale is None:
            continue
        if pool.backends:
            errors.append(f"{at}.backends: not allowed with autoscale (replicas are managed)")
        if scale.max_replicas < scale.min_replicas:
            errors.append(f"{at}.autoscale.max_replicas: must be >= min_replicas")
        if scale.panic_window_s > scale.stable_window_s:
            errors.append(f"{at}.autoscale.panic_window_s: must be <= stable_window_s")
        if scale.driver == "process" and not any("{port}" in a for a in scale.command):
            errors.append(f"{at}.autoscale.command: the process driver needs {{port}} in it")
    if errors:
        raise ConfigError(errors)
    return config


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read {path}: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"<file>: not valid YAML: {exc}"]) from None
    return parse_config(data)
