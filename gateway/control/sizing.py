"""SLO sizing: the fewest replicas whose queue meets a waiting-time target (Erlang C).

The gateway's queue is one queue in front of every slot of the pool, so the pool is an
M/M/c system: ``c`` = replicas x slots per replica servers, offered ``a`` = arrival rate x
service time Erlangs (the offered concurrency of ``demand.py``). An arrival waits with
probability C(c, a), Erlang's C formula, and then for an exponential time of rate
(c - a) / service, so

    P(wait > t) = C(c, a) * exp(-(c - a) * t / service)

and the p-quantile of the wait is 0 where C(c, a) <= 1 - p, else
service * ln(C(c, a) / (1 - p)) / (c - a). A target on that quantile asks for more
replicas than a target concurrency where service times are long or replicas have few
slots, and fewer where many small requests share many slots (pooling: the square-root
staffing effect). Poisson arrivals and exponential service make it an estimate, which
is why the measured quantile is exported beside the predicted one.

Pure and exact for any c: C comes from Erlang B's recursion, which neither overflows
nor loses precision (B(0) = 1, B(k) = a B(k-1) / (k + a B(k-1)),
C = c B / (c - a (1 - B))).
"""

from __future__ import annotations

import math

P99 = 0.99


def erlang_c(servers: int, load: float) -> float:
    """The probability that an arrival must wait: 1 at or over saturation."""
    if load <= 0:
        return 0.0
    if servers <= load:
        return 1.0
    b = 1.0
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    return servers * b / (servers - load * (1 - b))


def wait_quantile_s(servers: int, load: float, service_s: float, quantile: float = P99) -> float:
    """The ``quantile`` (0-1) of the wait for a server; inf at or over saturation."""
    if servers <= load:
        return math.inf
    waits, tail = erlang_c(servers, load), 1.0 - quantile
    if waits <= tail:
        return 0.0
    return service_s * math.log(waits / tail) / (servers - load)


def replicas_for_wait(
    load: float, service_s: float, slots: int, wait_s: float, most: int, quantile: float = P99
) -> int:
    """The fewest replicas of ``slots`` servers each whose wait ``quantile`` is at most
    ``wait_s``; ``most`` when not even that many meet it (a target cannot buy more than
    the pool may have). 0 with no load."""
    if load <= 0:
        return 0
    n = min(most, max(1, math.floor(load / slots)))  # fewer would be saturated
    while n < most and wait_quantile_s(n * slots, load, service_s, quantile) > wait_s:
        n += 1
    return n
