"""Which pool a request goes to: its path's longest matching route."""

from __future__ import annotations

from gateway.dataplane.pool import Pool


class Router:
    """Longest path prefix wins; a prefix matches whole segments only."""

    def __init__(self, routes: list[tuple[str, Pool]]) -> None:
        self._routes = sorted(routes, key=lambda pr: len(pr[0]), reverse=True)

    def match(self, path: str) -> Pool | None:
        for prefix, pool in self._routes:
            base = prefix.rstrip("/")
            if path == prefix or path.startswith(base + "/") or not base:
                return pool
        return None
