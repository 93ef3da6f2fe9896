"""The data plane: a request in, attempts on replicas, one answer out; routing, limits, health."""
