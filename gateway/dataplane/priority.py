"""Who goes first when the replicas are saturated: a request's priority class and tenant.

Classes, highest first: ``critical``, ``standard`` (the default), ``sheddable``. A route
sets its requests' class; a client may lower its own with ``X-Priority`` (a batch job
volunteering to go last is always welcome) and raise it only on a route that allows it
(``priority_header: true``): otherwise any client could claim to be critical.

The tenant is whom fairness is between: ``X-Tenant`` (set by an authenticating proxy in
front), else the API key (a hash of ``Authorization``, never the key itself), else the
client's address. Tenants of one class are served in turn (``queue.py``), so one
tenant's flood waits behind itself, not in front of everyone else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

P = TypeVar("P")  # a pool

CRITICAL, STANDARD, SHEDDABLE = 0, 1, 2  # ranks: lower goes first
RANKS: dict[str, int] = {"critical": CRITICAL, "standard": STANDARD, "sheddable": SHEDDABLE}
MAX_TENANT = 128  # a longer X-Tenant is cut: it is a key in a dict, not a document


@dataclass(frozen=True, slots=True)
class Target(Generic[P]):
    """Where a route sends its requests, and as what."""

    pool: P
    rank: int = STANDARD
    header_may_raise: bool = False  # the route's ``priority_header``
    deadline_s: float | None = None  # the route's (``admission.deadline_of``)


def rank_of(target: Target[P], header: str | None) -> int:
    """The request's class: the route's, or what its ``X-Priority`` asks if that is lower
    (or, where the route allows it, higher). An unknown value is ignored."""
    asked = RANKS.get(header.strip().lower()) if header else None
    if asked is None:
        return target.rank
    return asked if asked > target.rank or target.header_may_raise else target.rank


def tenant_of(tenant: str | None, authorization: str | None, peer: str) -> str:
    if tenant:
        return "t:" + tenant[:MAX_TENANT]
    if authorization:
        return f"k:{hash(authorization) & 0xFFFFFFFFFFFF:012x}"
    return "a:" + peer
