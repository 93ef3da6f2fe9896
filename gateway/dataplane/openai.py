"""What the gateway answers itself on OpenAI API routes, in OpenAI's shapes: the models a
route serves (``GET <path>/models``) and errors (``{"error": {"message", "type", "param",
"code"}}``), which the official clients turn into their exception classes."""

from __future__ import annotations

import time
from typing import Any

from gateway.dataplane.routing import Route, UnknownModel
from gateway.http.exchange import Exchange, json_response

ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError"}


def asks_for_models(route: Route[Any], exchange: Exchange) -> bool:
    return bool(route.models) and exchange.method == "GET" and exchange.path == route.listing_path()


def answer_models(exchange: Exchange, route: Route[Any], headers: list[tuple[str, str]]) -> None:
    """Every model name and alias the route serves, with the pool that serves it."""
    created = int(time.time())
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": target.pool.name}
        for name, target in route.models.items()
    ]
    json_response(exchange, 200, {"object": "list", "data": data}, headers)


def answer_error(exchange: Exchange, exc: UnknownModel, headers: list[tuple[str, str]]) -> None:
    kind = ERROR_TYPES.get(exc.status, "APIError")
    body = {"message": str(exc), "type": kind, "param": "model", "code": exc.status}
    json_response(exchange, exc.status, {"error": body}, headers)
