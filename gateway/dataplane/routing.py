"""Which pool a request goes to: its path's longest matching route, then, for routes
that name models (the OpenAI API), the JSON body's ``model``.

Routes sharing a path form one ``Route``: its ``models`` (names and aliases, each to one
pool, and ``canonical``: each to its model's own name) and its ``default`` (the route with
that path and no model, if any). Only a route with models needs the body parsed (the proxy
parses it, once); the body is forwarded as it came either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

P = TypeVar("P")  # a pool: the router only hands it back


class UnknownModel(Exception):
    """The body names no model this route serves, and the route has no default: a 404,
    or a 400 when the body is no JSON object with a string ``model``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Route(Generic[P]):
    path: str
    default: P | None = None
    models: dict[str, P] = field(default_factory=dict)
    canonical: dict[str, str] = field(default_factory=dict)

    def pool_for(self, request: Any) -> tuple[P, str]:
        """The pool for a request whose body's JSON is ``request`` (None: none, or not
        parsed, which a route without models does not need), and the configured name of
        the model it was routed by ("" when by the default: a label that stays in a
        bounded set). Raises UnknownModel."""
        if not self.models:
            assert self.default is not None  # a route has a model or is a default
            return self.default, ""
        model = request.get("model") if isinstance(request, dict) else None
        model = model if isinstance(model, str) else None
        if isinstance(model, str) and model in self.models:
            return self.models[model], self.canonical[model]
        if self.default is not None:
            return self.default, ""
        if model is None:
            raise UnknownModel(400, "the body must be a JSON object naming a model")
        raise UnknownModel(404, f"The model `{model}` does not exist.")

    def listing_path(self) -> str:
        """Where the route answers ``GET`` with the models it serves: ``<path>/models``."""
        return self.path.rstrip("/") + "/models"


class Router(Generic[P]):
    """Longest path prefix wins; a prefix matches whole segments only. ``routes`` are
    (path, pool, model names: the first the model's, the rest aliases; none for a default)."""

    def __init__(self, routes: list[tuple[str, P, tuple[str, ...]]]) -> None:
        by_path: dict[str, Route[P]] = {}
        for path, pool, names in routes:
            route = by_path.setdefault(path, Route(path))
            if not names and route.default is None:  # config validation refuses a second
                route.default = pool
            for name in names:
                if name not in route.models:  # the first route naming it wins
                    route.models[name], route.canonical[name] = pool, names[0]
        self._routes = sorted(by_path.values(), key=lambda r: len(r.path), reverse=True)

    def match(self, path: str) -> Route[P] | None:
        for route in self._routes:
            base = route.path.rstrip("/")
            if path == route.path or path.startswith(base + "/") or not base:
                return route
        return None
