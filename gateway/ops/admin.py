"""The admin listener: Prometheus metrics (open) and the admin API (bearer token).

The API lets an operator see pools and replicas, change a pool's replica bounds, drain a
replica, and reload the config. Every ``/admin`` route needs ``Authorization: Bearer
TOKEN``, compared in constant time; with no token configured the routes are off, so an
admin port exposed by mistake grants nothing but metrics. ``OPENAPI`` documents the
routes and a test checks it against the router.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiohttp import web

from gateway.config import Admin
from gateway.ops.metrics import CONTENT_TYPE
from gateway.ops.view import STATES, GatewayView, PoolView

log = logging.getLogger(__name__)
WEAK_TOKENS = frozenset({"change-me", "changeme", "secret", "token", "admin"})
MIN_TOKEN_CHARS = 16  # a shorter token is refused: the admin API can start replicas
_POOL = {"$ref": "#/components/schemas/Pool"}
_ERROR = {"description": "error", "content": {"application/json": {}}}
OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "inference-gateway admin API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Replica": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "url": {"type": "string", "nullable": True},
                    "state": {
                        "type": "string",
                        "enum": list(STATES),
                    },
                    "inflight": {"type": "integer"},
                    "healthy": {"type": "boolean"},
                    "gpus": {"type": "array", "items": {"type": "string"}},
                },
            },
            "Pool": {
                "type": "object",
                "properties": {
                    "policy": {"type": "string"},
                    "inflight": {"type": "integer"},
                    "queued": {"type": "integer"},
                    "autoscaled": {"type": "boolean"},
                    "min_replicas": {"type": "integer", "nullable": True},
                    "max_replicas": {"type": "integer", "nullable": True},
                    "desired_replicas": {"type": "integer", "nullable": True},
                    "replicas": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Replica"},
                    },
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/admin/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": {"description": "ok"}}}
        },
        "/admin/pools": {
            "get": {
                "summary": "Pools with their replicas, state, load and GPUs",
                "responses": {"200": {"description": "ok"}, "401": _ERROR},
            }
        },
        "/admin/pools/{pool}/scale": {
            "put": {
                "summary": "Set an autoscaled pool's min and max replicas (until the next reload)",
                "parameters": [{"name": "pool", "in": "path", "required": True}],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "min_replicas": {"type": "integer", "minimum": 0},
                                    "max_replicas": {"type": "integer", "minimum": 1},
                                },
                            }
                        }
                    }
                },
                "responses": {
                    "200": {
                        "description": "the pool",
                        "content": {"application/json": {"schema": _POOL}},
                    },
                    "400": _ERROR, "401": _ERROR, "404": _ERROR, "409": _ERROR,
                },
            }
        },
        "/admin/pools/{pool}/replicas/{replica}/drain": {
            "post": {
                "summary": "Drain a replica: no new requests; an autoscaled one is then replaced",
                "parameters": [
                    {"name": "pool", "in": "path", "required": True},
                    {"name": "replica", "in": "path", "required": True},
                ],
                "responses": {"202": {"description": "draining"}, "401": _ERROR, "404": _ERROR},
            }
        },
        "/admin/reload": {
            "post": {
                "summary": "Re-read the config file and apply it; a bad file changes nothing",
                "responses": {"200": {"description": "applied"}, "400": _ERROR, "401": _ERROR},
            }
        },
    },
}  # fmt: skip


class Refused(Exception):
    """An operation the gateway turned down: the HTTP status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Exposition(Protocol):
    def exposition(self, view: GatewayView | None = None) -> bytes: ...


class Operable(Protocol):
    """What the admin API reads and does (the gateway is one): it sees the gateway only
    through ``view`` and acts only through these calls, each raising ``Refused``."""

    @property
    def admin_settings(self) -> Admin: ...
    @property
    def recorder(self) -> Exposition: ...
    def view(self) -> GatewayView: ...
    def scale(self, pool: str, bounds: Mapping[str, int]) -> None:
        """New replica bounds for an autoscaled pool, validated as the config is."""
        ...

    def drain(self, pool: str, replica: str) -> None:
        """Take a ready replica out of rotation (an autoscaled one is then stopped)."""
        ...

    async def reload_from_file(self) -> list[str]: ...


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"error": message, "status": status})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def read_token(env: str, file: str | None) -> str | None:
    token = os.environ.get(env, "").strip()
    if not token and file:
        try:
            token = Path(file).read_text().strip()
        except OSError:
            token = ""
    return token or None


class AdminApi:
    """The routes; off until ``refresh_token`` has read a token (the gateway calls it
    at start and after each reload, in a thread: it may read a file)."""

    def __init__(self, gateway: Operable) -> None:
        self.gateway = gateway
        self.token: str | None = None

    def refresh_token(self) -> None:
        """Read the token; a placeholder or a short one leaves the admin routes off, as
        no token does (they can start GPU containers and reload the config)."""
        admin = self.gateway.admin_settings
        token = read_token(admin.token_env, admin.token_file)
        if token is not None and (token in WEAK_TOKENS or len(token) < MIN_TOKEN_CHARS):
            why = "a well-known placeholder" if token in WEAK_TOKENS else "too short"
            log.error(
                "the admin token is %s: the admin API stays off until one of at least %d "
                "random characters is set",
                why,
                MIN_TOKEN_CHARS,
            )
            token = None
        self.token = token

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/admin/openapi.json", self.openapi)
        app.router.add_get("/admin/pools", self.list_pools)
        app.router.add_put("/admin/pools/{pool}/scale", self.scale)
        app.router.add_post("/admin/pools/{pool}/replicas/{replica}/drain", self.drain)
        app.router.add_post("/admin/reload", self.reload)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/admin"):
            return await handler(request)  # type: ignore[no-any-return]
        if self.token is None:
            env = self.gateway.admin_settings.token_env
            return json_error(404, f"admin API off: no token configured (set {env})")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            return json_error(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )
        return await handler(request)  # type: ignore[no-any-return]

    async def metrics(self, request: web.Request) -> web.Response:
        view = self.gateway.view()  # on the loop; the rendering, in a thread, reads only it
        body = await asyncio.to_thread(self.gateway.recorder.exposition, view)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(OPENAPI)

    async def list_pools(self, request: web.Request) -> web.Response:
        return _json({"pools": {p.name: _describe(p) for p in self.gateway.view().pools}})

    async def scale(self, request: web.Request) -> web.Response:
        name = request.match_info["pool"]
        usage = "body must be {min_replicas?: int >= 0, max_replicas?: int >= 1}, min <= max"
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return json_error(400, usage)
        if (
            not isinstance(body, dict)
            or not body.keys() <= {"min_replicas", "max_replicas"}
            or any(type(v) is not int for v in body.values())
        ):
            return json_error(400, usage)
        try:
            self.gateway.scale(name, body)
        except Refused as exc:
            return json_error(
                exc.status, f"{usage}: {exc.message}" if exc.status == 400 else exc.message
            )
        return _json(_describe(_pool(self.gateway.view(), name)))

    async def drain(self, request: web.Request) -> web.Response:
        name, rid = request.match_info["pool"], request.match_info["replica"]
        try:
            self.gateway.drain(name, rid)
        except Refused as exc:
            return json_error(exc.status, exc.message)
        return _json({"draining": rid}, status=202)

    async def reload(self, request: web.Request) -> web.Response:
        errors = await self.gateway.reload_from_file()
        if errors:
            return _json({"reloaded": False, "errors": errors}, status=400)
        await asyncio.to_thread(self.refresh_token)  # may read a token file
        return _json({"reloaded": True})


def _pool(view: GatewayView, name: str) -> PoolView:
    return next(p for p in view.pools if p.name == name)


def _describe(pool: PoolView) -> dict[str, Any]:
    scaler = pool.autoscale
    replicas = scaler.members if scaler is not None else pool.replicas
    return {
        "policy": pool.policy,
        "inflight": pool.inflight,
        "queued": pool.queued,
        "autoscaled": scaler is not None,
        "min_replicas": scaler.min_replicas if scaler else None,
        "max_replicas": scaler.max_replicas if scaler else None,
        "desired_replicas": scaler.desired if scaler else None,
        "replicas": [
            {"id": r.id, "url": r.url, "state": r.state, "inflight": r.inflight,
             "healthy": r.routable, "gpus": list(r.gpus)}
            for r in replicas
        ],
    }  # fmt: skip


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
