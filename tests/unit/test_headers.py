"""The header and request-target rules in ``gateway/dataplane/headers.py``, as tables."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.dataplane.headers import (
    Headers,
    Network,
    forwarding_headers,
    has_dot_segment,
    is_trusted,
    request_problem,
    response_headers,
    safe_request_id,
    split_request,
)


def test_split_request_sorts_each_kind_of_header() -> None:
    head = split_request(
        [
            ("Host", "h"),
            ("Connection", "keep-alive, X-A, Host"),
            ("X-A", "1"),
            ("connection", " x-b ,close,,"),
            ("X-B", "2"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "3"),
            ("Proxy-Authorization", "Basic x"),
            ("Upgrade", "h2c"),
            ("Transfer_Encoding", "chunked"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("Forwarded", "for=1.1.1.1"),
            ("X-Request-ID", "first"),
            ("X-Request-ID", "second"),
            ("Content-Type", "text/plain"),
        ]
    )
    assert head.end_to_end == [("Host", "h"), ("Content-Type", "text/plain")]
    assert head.forwarding == [("X-Forwarded-For", "1.1.1.1"), ("Forwarded", "for=1.1.1.1")]
    assert (head.hosts, head.request_id) == (1, "first")


def test_connection_can_name_out_a_forwarding_header() -> None:
    head = split_request([("Connection", "X-Real-IP"), ("X-Real-IP", "1.1.1.1")])
    assert head.forwarding == [] and head.hosts == 0


def test_response_headers_drop_hop_by_hop_named_and_the_replica_s_request_id() -> None:
    relayed = response_headers(
        [
            ("Connection", "keep-alive, X-A"),
            ("CONNECTION", "x-b"),
            ("X-A", "1"),
            ("x-b", "2"),
            ("Transfer-Encoding", "chunked"),
            ("Proxy-Authenticate", "Basic"),
            ("X-Request-ID", "replica's"),
            ("X_Under", "kept: responses are ours to relay"),
            ("Set-Cookie", "a=1"),
        ]
    )
    assert relayed == [("X_Under", "kept: responses are ours to relay"), ("Set-Cookie", "a=1")]


@pytest.mark.parametrize(
    ("client", "trusted", "expected"),
    [
        (
            [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https")],
            False,
            [("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Proto", "http")],
        ),
        ([], True, [("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Proto", "http")]),
        (
            [
                ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
                ("X-Forwarded-For", "3.3.3.3"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Proto", "http"),
                ("Forwarded", "for=1.1.1.1"),
            ],
            True,
            [
                ("Forwarded", "for=1.1.1.1"),
                ("X-Forwarded-For", "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1"),
                ("X-Forwarded-Proto", "https"),
            ],
        ),
    ],
    ids=["untrusted", "trusted-nothing-sent", "trusted-chain"],
)
def test_forwarding_headers(client: Headers, trusted: bool, expected: Headers) -> None:
    assert forwarding_headers(client, "10.0.0.1", trusted) == expected


NETWORKS = (ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"), ip_network("192.0.2.7"))


@pytest.mark.parametrize(
    ("peer", "networks", "trusted"),
    [
        ("10.1.2.3", NETWORKS, True),
        ("::ffff:10.1.2.3", NETWORKS, True),
        ("2001:db8::1", NETWORKS, True),
        ("192.0.2.7", NETWORKS, True),
        ("192.0.2.8", NETWORKS, False),
        ("11.0.0.1", NETWORKS, False),
        ("", NETWORKS, False),
        ("10.1.2.3", (), False),
    ],
)
def test_is_trusted(peer: str, networks: tuple[Network, ...], trusted: bool) -> None:
    assert is_trusted(peer, networks) is trusted


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("abc-123", True),
        ("Req_1.2:x-" + "y" * 118, True),  # 128
        ("y" * 129, False),
        ("", False),
        (None, False),
        ("a b", False),
        ("a\tb", False),
        ("id\n", False),
        ("\udcff", False),  # a high byte, as the server decodes it
        ("é", False),
        ("a,b", False),
        ("a/b", False),
    ],
)
def test_safe_request_id(value: str | None, safe: bool) -> None:
    assert safe_request_id(value) == (value if safe else None)


@pytest.mark.parametrize(
    ("path", "dot"),
    [
        ("/predict", False),
        ("/", False),
        ("/models/model.onnx", False),
        ("/a..b/...", False),
        ("/.well-known/x", False),
        ("/org%2Fmodel%2Ev2", False),
        ("/a%20b", False),
        ("/a\\b", False),
        ("/predict/../control", True),
        ("/predict/..", True),
        ("/..", True),
        ("/./x", True),
        ("/x/.", True),
        ("/x/%2e%2e/y", True),
        ("/x/%2E%2e/y", True),
        ("/x/.%2E", True),
        ("/x/%2e/y", True),
        ("/x%2f..%2fy", True),
        ("/x%2F%2E%2E%2Fy", True),
        ("/x%5c..%5Cy", True),
        ("/x/..\\y", True),
        ("/x/..;/y", True),
        ("/x/.;a=b/y", True),
        ("/x/..#frag", True),
    ],
)
def test_has_dot_segment(path: str, dot: bool) -> None:
    assert has_dot_segment(path) is dot


@pytest.mark.parametrize(
    ("path", "version", "hosts", "host", "problem"),
    [
        ("/p", "1.1", 1, "x", None),
        ("/p", "1.0", 1, "x", None),
        ("/p", "1.0", 0, "", None),
        ("/p", "1.1", 0, "", "no Host header"),
        ("/p", "1.1", 2, "x", "more than one Host header"),
        ("/p", "1.0", 2, "x", "more than one Host header"),
        ("/p/../q", "1.1", 1, "x", "dot-segments in the request path"),
        ("*", "1.1", 1, "x", "the request target must be a path"),
        ("http://a/p", "1.1", 1, "x", "the request target must be a path"),
        ("/p", "1.1", 1, "gw.example:8080", None),
        ("/p", "1.1", 1, "10.0.0.1", None),
        ("/p", "1.1", 1, "[::1]:80", None),
        ("/p", "1.1", 1, "", None),  # empty is allowed (RFC 9112 3.2: no authority)
        ("/p", "1.1", 1, "x y", "the Host header is not a host[:port]"),
        ("/p", "1.1", 1, "a/b", "the Host header is not a host[:port]"),
        ("/p", "1.1", 1, "a@b", "the Host header is not a host[:port]"),
        ("/p", "1.1", 1, "x:8o", "the Host header is not a host[:port]"),
        ("/p", "1.1", 1, "[::1", "the Host header is not a host[:port]"),
    ],
)
def test_request_problem(
    path: str, version: str, hosts: int, host: str, problem: str | None
) -> None:
    assert request_problem(path, version, hosts, host) == problem


BASE = {"routes": [{"path": "/", "pool": "d"}], "pools": {"d": {"backends": ["http://a:1"]}}}


def test_trusted_proxies_default_to_none_and_take_addresses_and_cidrs() -> None:
    assert parse_config(BASE).trusted_proxies == ()
    config = parse_config({**BASE, "trusted_proxies": ["10.0.0.0/8", "::1", "192.0.2.7"]})
    assert config.trusted_proxies == (
        ip_network("10.0.0.0/8"),
        ip_network("::1/128"),
        ip_network("192.0.2.7/32"),
    )


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (["10.0.0.1/8"], "trusted_proxies: 10.0.0.1/8 has host bits set"),
        (
            ["proxy.local"],
            "trusted_proxies: 'proxy.local' does not appear to be an IPv4 or IPv6 network",
        ),
        ([10], "trusted_proxies: 10 is not an address or CIDR, e.g. 10.0.0.0/8"),
        (
            "10.0.0.0/8",
            "trusted_proxies: must be a list of addresses or CIDRs, e.g. [10.0.0.0/8, ::1]",
        ),
    ],
)
def test_a_bad_trusted_proxies_entry_is_refused_naming_the_key(value: Any, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**BASE, "trusted_proxies": value})
    assert caught.value.errors == [error]
