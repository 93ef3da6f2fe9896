"""Header and request-target rules for one hop through the gateway: pure, no I/O.

The proxy applies them to every request, so each is one pass over the headers with a
frozenset lookup on the lower-cased name; the rarer work (a ``Connection`` list to honour,
a path with dots in it, a trusted peer) is done only when it is there. Invariants: no
hop-by-hop header crosses the gateway either way, Host always does (exactly one, or the
request gets 400), and what a replica learns about the client's address, scheme and
host comes from the gateway unless the peer is a proxy the operator trusts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address

Headers = list[tuple[str, str]]
Network = IPv4Network | IPv6Network

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded. Content-Length
# is recomputed by the side that writes the body; Expect was answered already (the body
# is read before a replica is chosen).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
    }
)
# What a client says about the hops before it: believed only from a trusted proxy.
FORWARDING = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip"}
)
# Tokens a Connection header may list that remove nothing more: hop-by-hop ones are gone
# anyway, "close" is no field (RFC 9110 registers the name so it never is one), and Host
# must reach the replica whatever a client says.
_NOT_REMOVABLE = HOP_BY_HOP | {"", "close", "host"}
# forwarded as they are, and noted: a request's class, tenant (priority.py) and deadline
# (admission.py) come from them
_NOTED = frozenset({"x-priority", "x-tenant", "authorization", "x-deadline-ms"})
_REQUEST_SPECIAL = HOP_BY_HOP | FORWARDING | _NOTED | {"host", "x-request-id"}
_RESPONSE_DROP = HOP_BY_HOP | {"x-request-id"}  # the gateway sets its own on every answer
# RFC 3986 uri-host (an IP literal in brackets, or a reg-name / IPv4) and an optional port
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(:[0-9]*)?")
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # fit for a header and a log line


@dataclass(slots=True)
class RequestHeaders:
    """A client request's headers, sorted once for forwarding."""

    end_to_end: Headers  # to send on as they are, Host included
    forwarding: Headers  # the client's Forwarded, X-Forwarded-*, X-Real-IP
    hosts: int  # how many Host headers came
    host: str  # the first one's value ("" if none)
    request_id: str | None  # the client's first X-Request-ID, not yet checked
    noted: dict[str, str]  # the first of each ``_NOTED`` header, by lower-case name


def split_request(headers: Iterable[tuple[str, str]]) -> RequestHeaders:
    """Sort a request's headers. Dropped: hop-by-hop ones, every one named in any
    ``Connection`` header (all of them, comma lists, any case) except Host, and names
    with an underscore, which some servers read as a dash (so ``Transfer_Encoding``
    could reach a framework as Transfer-Encoding; nginx drops them too). X-Request-ID
    is taken out: the gateway sends the one it settles on."""
    kept: Headers = []
    forwarding: Headers = []
    named: set[str] = set()
    hosts = 0
    host = ""
    request_id = None
    noted: dict[str, str] = {}
    for name, value in headers:
        low = name.lower()
        if low not in _REQUEST_SPECIAL:
            if "_" not in low:
                kept.append((name, value))
        elif low == "host":
            hosts += 1
            host = host or value
            kept.append((name, value))
        elif low in FORWARDING:
            forwarding.append((name, value))
        elif low == "connection":
            named.update(_tokens(value))
        elif low in _NOTED:
            noted.setdefault(low, value)
            kept.append((name, value))
        elif low == "x-request-id" and request_id is None:
            request_id = value
    named -= _NOT_REMOVABLE
    if named:
        kept, forwarding = _without(kept, named), _without(forwarding, named)
    return RequestHeaders(kept, forwarding, hosts, host, request_id, noted)


def response_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    """A replica's response headers to relay: without hop-by-hop ones, those named in
    any of its ``Connection`` headers, and its X-Request-ID."""
    kept: Headers = []
    named: set[str] = set()
    for name, value in headers:
        low = name.lower()
        if low not in _RESPONSE_DROP:
            kept.append((name, value))
        elif low == "connection":
            named.update(_tokens(value))
    named -= _NOT_REMOVABLE
    return _without(kept, named) if named else kept


def forwarding_headers(client: Headers, peer: str, trusted: bool) -> Headers:
    """The forwarding headers for the replica. From an untrusted peer, only what the
    gateway saw (``X-Forwarded-For: peer``, ``X-Forwarded-Proto: http``): a client can
    write anything in the ones it sends, so they are dropped. From a trusted proxy, its
    own go on, with ``peer`` appended to its X-Forwarded-For chain and its
    X-Forwarded-Proto kept (it may have terminated TLS)."""
    if not trusted:
        return [("X-Forwarded-For", peer), ("X-Forwarded-Proto", "http")]
    chain: list[str] = []
    proto: str | None = None
    kept: Headers = []
    for name, value in client:
        low = name.lower()
        if low == "x-forwarded-for":
            chain.append(value)
        elif low == "x-forwarded-proto":
            proto = proto or value
        else:
            kept.append((name, value))
    chain.append(peer)
    kept += [("X-Forwarded-For", ", ".join(chain)), ("X-Forwarded-Proto", proto or "http")]
    return kept


def is_trusted(peer: str, networks: tuple[Network, ...]) -> bool:
    """Is the peer address in one of ``networks``? An IPv4 peer on a dual-stack socket
    (``::ffff:10.0.0.1``) counts as its IPv4 address."""
    if not networks:
        return False
    try:
        address = ip_address(peer)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def safe_request_id(value: str | None) -> str | None:
    """``value`` if it is safe to echo and log (1-128 of ``A-Za-z0-9._:-``), else None."""
    return value if value is not None and _SAFE_REQUEST_ID.fullmatch(value) else None


def request_problem(path: str, version: str, hosts: int, host: str) -> str | None:
    """Why a request must get 400 with nothing forwarded, or None. The target must be a
    path (no absolute form, no ``*``); RFC 9112 3.2: one Host exactly (HTTP/1.0 may omit
    it: the replica's address is sent then), whose value is a host and optional port, so
    a replica that builds URLs from it never gets ``a/b`` or ``user@host``."""
    if not path.startswith("/"):
        return "the request target must be a path"
    if hosts > 1:
        return "more than one Host header"
    if hosts == 0 and version != "1.0":
        return "no Host header"
    if hosts and not _HOST.fullmatch(host):
        return "the Host header is not a host[:port]"
    if has_dot_segment(path):
        return "dot-segments in the request path"
    return None


def has_dot_segment(path: str) -> bool:
    """Does ``path`` hold a ``.`` or ``..`` segment, raw or percent-encoded? Routes match
    the path as sent, so a replica (or a framework before its handler) that resolved
    ``/predict/../admin`` would serve what no route allowed. Since servers differ in what
    they decode or split on first, separators are ``/``, ``\\``, ``#`` and ``%2f``/``%5c``
    (encoded slashes elsewhere, e.g. ``org%2Fmodel``, are fine), dots ``.`` and ``%2e``,
    any case, and a segment ends at ``;`` (Tomcat reads ``/..;/`` as ``/../``)."""
    if "." not in path and "%" not in path:  # nearly every path: two scans
        return False
    low = path.lower()
    if "%" in low:
        low = low.replace("%2e", ".").replace("%2f", "/").replace("%5c", "/")
    low = low.replace("\\", "/").replace("#", "/")
    return any(segment.partition(";")[0] in (".", "..") for segment in low.split("/"))


def _tokens(value: str) -> Iterable[str]:
    return (token.strip().lower() for token in value.split(","))


def _without(headers: Headers, names: set[str]) -> Headers:
    return [(k, v) for k, v in headers if k.lower() not in names]
