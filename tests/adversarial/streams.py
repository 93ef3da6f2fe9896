"""Requests as bytes on the wire, the Hypothesis strategies that make them, and what the
gateway must make of each: the oracle, written from the RFCs and the README's header
rules, not from the gateway's code.

A ``Spec`` is a request without its token; ``Spec.wire(token)`` is its exact bytes.
Three kinds:

* ``ok``: well-formed; it must reach the replica once, byte-exact in method, target and
  body, framed by one Content-Length (none for an empty body on a method that has none),
  with the header rules applied, and be answered 200 with the replica's digest;
* ``soft``: well-formed HTTP but refused by the gateway's rules (a dot-segment path, a
  target that is not a path, no or two Host fields, a Host value that is no host): 400,
  nothing forwarded, and the connection goes on (these are bodiless, so nothing of them
  is left unread);
* ``fatal``: bad framing or syntax: a 4xx (``statuses``; 501 for a transfer coding the
  gateway does not apply, as RFC 9112 6.1 has it), nothing of it forwarded, and the
  connection closes after it; no byte after it is read as a request.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from hypothesis import strategies as st

from tests.adversarial.conftest import LIMITS, MAX_BODY_BYTES

OWS = b" \t"
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # README: kept only if it matches
GATEWAY_ADDED = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-request-id", "content-length"}
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # the gateway sends Content-Length: 0


@dataclass(frozen=True)
class Field:
    """One header line: ``name: <lead>value<trail>``. ``role`` says what the gateway must
    do with it: ``end`` (forward as is), ``host``, ``token`` (ours), ``hop`` (drop),
    ``conn`` (a Connection list: drop it and what it names), ``fwd`` (replaced by the
    gateway's own), ``rid`` (X-Request-ID), ``under`` (a name with ``_``: drop),
    ``framing`` (Content-Length or Transfer-Encoding), ``expect``, ``close``."""

    name: bytes
    value: bytes
    role: str
    lead: bytes = b" "
    trail: bytes = b""

    def line(self, token: str) -> bytes:
        value = token.encode() if self.role == "token" else self.value
        return self.name + b":" + self.lead + value + self.trail


@dataclass(frozen=True)
class Chunked:
    """A chunked body: each chunk's size as written (hex, any case, leading zeros), its
    extensions, its data; the last chunk's size and extensions; the trailer lines."""

    chunks: tuple[tuple[bytes, bytes, bytes], ...]
    last: bytes = b"0"
    last_ext: bytes = b""
    trailers: tuple[bytes, ...] = ()

    def wire(self) -> bytes:
        out = [b"%b%b\r\n%b\r\n" % chunk for chunk in self.chunks]
        out.append(self.last + self.last_ext + b"\r\n")
        out.extend(t + b"\r\n" for t in self.trailers)
        out.append(b"\r\n")
        return b"".join(out)


@dataclass(frozen=True)
class Spec:
    method: str
    target: str
    fields: tuple[Field, ...]
    body: bytes = b""
    chunked: Chunked | None = None
    kind: str = "ok"  # ok | soft | fatal
    statuses: frozenset[int] = frozenset({200})
    why: str = ""  # for soft and fatal ones: what is wrong with it
    raw: bytes | None = None  # a fatal request that is easier written out whole

    def wire(self, token: str) -> bytes:
        if self.raw is not None:
            return self.raw.replace(b"{token}", token.encode())
        head = [f"{self.method} {self.target} HTTP/1.1".encode()]
        head.extend(f.line(token) for f in self.fields)
        payload = self.chunked.wire() if self.chunked is not None else self.body
        return b"\r\n".join(head) + b"\r\n\r\n" + payload

    @property
    def closes(self) -> bool:
        return any(f.role == "close" for f in self.fields)

    @property
    def delay_ms(self) -> int:
        """How long the replica waits before it answers (``X-Delay-Ms``)."""
        return next((int(f.value) for f in self.fields if f.name == b"X-Delay-Ms"), 0)

    @property
    def expects_continue(self) -> bool:
        return any(f.role == "expect" for f in self.fields)

    # -- the oracle for ``ok`` requests -------------------------------------------------

    def forwarded_fields(self, token: str) -> list[tuple[str, bytes]]:
        """The end-to-end fields the replica must get, in order, names as sent, values
        without the whitespace around them (the gateway's own fields aside)."""
        named: set[str] = set()
        for f in self.fields:
            if f.role == "conn":
                named.update(t.strip(OWS).lower().decode() for t in f.value.split(b","))
        named.discard("host")
        return [
            (f.name.decode(), token.encode() if f.role == "token" else f.value.strip(OWS))
            for f in self.fields
            if f.role in ("end", "host", "token")
            and not (f.role == "end" and f.name.decode().lower() in named)
        ]

    def request_id(self) -> str | None:
        """The client's X-Request-ID the gateway must keep, or None for a new one."""
        for f in self.fields:
            if f.role == "rid":
                value = f.value.strip(OWS).decode("latin-1")
                return value if SAFE_REQUEST_ID.fullmatch(value) else None
        return None

    def digest(self) -> dict[str, object]:
        return {
            "method": self.method,
            "target": self.target,
            "length": len(self.body),
            "sha256": hashlib.sha256(self.body).hexdigest(),
        }


# -- the parts of a request ------------------------------------------------------------

HARMLESS = (
    "Accept",
    "Accept-Language",
    "User-Agent",
    "Content-Type",
    "Cache-Control",
    "Authorization",
    "Cookie",
    "If-None-Match",
    "Origin",
    "X-Model",
    "X-Trace-Id",
    "X-Custom",
)
HOP_BY_HOP = (
    (b"Keep-Alive", b"timeout=5, max=100"),
    (b"TE", b"trailers"),
    (b"Trailer", b"X-Checksum"),
    (b"Proxy-Authorization", b"Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
    (b"Proxy-Connection", b"keep-alive"),
    (b"Proxy-Authenticate", b"Basic"),
)
FORWARDING = (
    (b"X-Forwarded-For", b"203.0.113.7"),
    (b"X-Forwarded-Host", b"evil.example"),
    (b"X-Forwarded-Proto", b"https"),
    (b"Forwarded", b"for=203.0.113.7;proto=https"),
    (b"X-Real-IP", b"203.0.113.7"),
)
UNDERSCORED = (
    (b"X_Custom", b"1"),
    (b"Transfer_Encoding", b"chunked"),
    (b"Content_Length", b"5"),
    (b"X_Forwarded_For", b"203.0.113.7"),
)
# printable ASCII, the two kinds of inner whitespace, and some obs-text (0x80-0xff)
VALUE_BYTES = [bytes([b]) for b in range(0x21, 0x7F)] + [b" ", b"\t"] + [b"\xc3\xa9", b"\xff"]
WHITESPACE = st.sampled_from([b"", b" ", b"  ", b"\t", b" \t ", b"\t\t"])
SPACES = st.sampled_from([b"", b" ", b"  "])
# path characters without "." (dot-segments are their own case) and without %2e
SEGMENT_CHARS = [*"ABCXYZabcxyz0189-_~!$&'()*+,;=:@", "%20", "%41", "%7E", "%2F", "%5c"]
QUERY_CHARS = [*SEGMENT_CHARS, ".", "/", "?", "%2e", ".."]
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")


@st.composite
def recased(draw: st.DrawFn, text: str) -> str:
    """``text`` with the case of any of its letters flipped."""
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(text, flips, strict=True))


@st.composite
def field_values(draw: st.DrawFn) -> bytes:
    value = b"".join(draw(st.lists(st.sampled_from(VALUE_BYTES), max_size=24)))
    return value.strip(OWS)


@st.composite
def end_to_end_field(draw: st.DrawFn) -> Field:
    name = draw(
        st.one_of(
            st.sampled_from(HARMLESS),
            st.from_regex(r"X-Opt-[A-Za-z0-9][A-Za-z0-9-]{0,8}", fullmatch=True),
        )
    )
    name = draw(recased(name))
    return Field(name.encode(), draw(field_values()), "end", draw(WHITESPACE), draw(WHITESPACE))


@st.composite
def targets(draw: st.DrawFn) -> str:
    segments = draw(
        st.lists(st.lists(st.sampled_from(SEGMENT_CHARS), max_size=6).map("".join), max_size=4)
    )
    target = "/" + "/".join(segments)
    if draw(st.booleans()):
        target += "?" + "".join(draw(st.lists(st.sampled_from(QUERY_CHARS), max_size=8)))
    return target


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Mostly small, some a few KiB, a few above the server's 256 KiB high-water mark;
    some are HTTP requests themselves (a smuggling attempt must stay a body)."""
    bucket = draw(st.integers(0, 15))  # shrinks toward the small ones
    if bucket == 15:
        size = draw(st.integers(260_000, 300_000))
    elif bucket >= 12:
        size = draw(st.integers(65, 6000))
    else:
        size = draw(st.integers(0, 64))
    seed = draw(st.integers(0, 2**16))
    body = random.Random(seed).randbytes(size)
    if size and draw(st.integers(0, 5)) == 0:
        body = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n" + body[:64]
    return body


@st.composite
def chunk_extensions(draw: st.DrawFn) -> bytes:
    exts = draw(
        st.lists(
            st.sampled_from(
                [b";a", b";ext=1", b";name=token-value", b';q="quoted; value"', b";ieof"]
            ),
            max_size=2,
        )
    )
    return b"".join(exts)


@st.composite
def hex_size(draw: st.DrawFn, size: int) -> bytes:
    text = f"{size:x}"
    if draw(st.booleans()):
        text = text.upper()
    return (b"0" * draw(st.integers(0, 2))) + text.encode()


@st.composite
def chunked_bodies(draw: st.DrawFn, body: bytes) -> Chunked:
    """``body`` cut into chunks at random places, sizes and extensions written any valid
    way, and maybe trailer fields (which must never reach the replica)."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=6))))
    cuts = [c for c in cuts if 0 < c < len(body)]
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if body[a:b]]
    chunks = tuple(
        (draw(hex_size(len(piece))), draw(chunk_extensions()), piece) for piece in pieces
    )
    trailers = tuple(
        b"X-Trailer-%d: %b" % (i, draw(field_values())) for i in range(draw(st.integers(0, 2)))
    )
    last = b"0" * draw(st.integers(1, 3))
    return Chunked(chunks, last, draw(chunk_extensions()), trailers)


@st.composite
def framing(draw: st.DrawFn, method: str, body: bytes) -> tuple[list[Field], Chunked | None]:
    """How the body is delimited: Content-Length, chunked, or (empty body) nothing."""
    choices = ["length", "chunked"] if body else ["none", "length", "chunked"]
    if method == "HEAD":
        choices = ["none", "length"]
    how = draw(st.sampled_from(choices))
    if how == "none":
        return [], None
    if how == "length":
        name = draw(recased("Content-Length")).encode()
        value = b"0" * draw(st.integers(0, 2)) + str(len(body)).encode()
        return [Field(name, value, "framing", draw(WHITESPACE), draw(WHITESPACE))], None
    name = draw(recased("Transfer-Encoding")).encode()
    value = draw(recased("chunked")).encode()
    # no HTAB after "chunked": llhttp refuses it (test_found_bugs), though it is OWS
    field_ = Field(name, value, "framing", draw(WHITESPACE), draw(SPACES))
    return [field_], draw(chunked_bodies(body))


@st.composite
def header_extras(draw: st.DrawFn, names: list[bytes]) -> list[Field]:
    """Fields the gateway must act on: hop-by-hop ones, Connection lists naming some of
    the request's own fields, the client's forwarding fields, underscored names, and an
    X-Request-ID that is kept only if it is safe."""
    extras: list[Field] = []
    for name, value in draw(st.lists(st.sampled_from(HOP_BY_HOP), max_size=2)):
        extras.append(Field(draw(recased(name.decode())).encode(), value, "hop"))
    for _ in range(draw(st.integers(0, 2))):
        tokens = [b"keep-alive"] if draw(st.booleans()) else []
        if names:
            tokens += draw(st.lists(st.sampled_from(names), max_size=2))
        tokens += draw(st.lists(st.sampled_from([b"host", b"X-Absent", b"HOST"]), max_size=1))
        if not tokens:
            tokens = [b"keep-alive"]
        separator = draw(st.sampled_from([b",", b", ", b" ,\t"]))
        name = draw(recased("Connection")).encode()
        extras.append(Field(name, separator.join(tokens), "conn", draw(WHITESPACE)))
    for name, value in draw(st.lists(st.sampled_from(FORWARDING), max_size=2)):
        extras.append(Field(name, value, "fwd"))
    for name, value in draw(st.lists(st.sampled_from(UNDERSCORED), max_size=1)):
        extras.append(Field(name, value, "under"))
    for _ in range(draw(st.integers(0, 2))):
        value = draw(
            st.one_of(
                st.from_regex(r"[A-Za-z0-9._:-]{1,40}", fullmatch=True).map(str.encode),
                st.sampled_from([b"has space", b"a" * 129, b"x/y", b"", b"caf\xc3\xa9", b"<x>"]),
            )
        )
        extras.append(Field(draw(recased("X-Request-ID")).encode(), value, "rid", draw(WHITESPACE)))
    return extras


@st.composite
def ok_requests(
    draw: st.DrawFn,
    rich_headers: bool = True,
    delay_ms: st.SearchStrategy[int] | None = None,
) -> Spec:
    """A well-formed request with random fields in random order and any valid framing."""
    method = draw(st.sampled_from(METHODS))
    target = draw(targets())
    body = b"" if method == "HEAD" else draw(bodies())
    frame, chunked = draw(framing(method, body))
    fields: list[Field] = [
        Field(
            draw(recased("Host")).encode(), draw(st.sampled_from(HOSTS)), "host", draw(WHITESPACE)
        ),
        Field(b"X-Token", b"", "token"),
        *frame,
    ]
    if rich_headers:
        end = draw(st.lists(end_to_end_field(), max_size=8))
        # duplicates of harmless fields: the same name again, in another case
        for f in draw(st.lists(st.sampled_from(end), max_size=3)) if end else []:
            dup = Field(draw(recased(f.name.decode())).encode(), draw(field_values()), "end")
            end.append(dup)
        fields += end
        fields += draw(header_extras([f.name for f in end]))
    if body and draw(st.integers(0, 3)) == 0:
        fields.append(Field(draw(recased("Expect")).encode(), b"100-continue", "expect"))
    if delay_ms is not None:
        fields.append(Field(b"X-Delay-Ms", str(draw(delay_ms)).encode(), "end"))
    fields = draw(st.permutations(fields))
    return Spec(method, target, tuple(fields), body, chunked)


HOSTS = [b"x", b"gw.example", b"127.0.0.1:8080", b"[::1]:80", b"Example.COM"]


def closing(spec: Spec, how: str = "close") -> Spec:
    """The same request asking the gateway to close the connection after its answer:
    ``Connection: close`` (any case), or for a bodiless one an offer to upgrade the
    connection, which the gateway answers as plain HTTP/1.1 and then closes."""
    fields, body, chunked = spec.fields, spec.body, spec.chunked
    if how == "upgrade":  # bodiless: one with a body is refused (FATAL, test_found_bugs)
        fields = tuple(f for f in fields if f.role not in ("framing", "expect"))
        body, chunked = b"", None
        extra = (Field(b"Connection", b"Upgrade", "close"), Field(b"Upgrade", b"websocket", "hop"))
    else:
        extra = (Field(b"Connection", b"Close" if how == "Close" else b"close", "close"),)
    return Spec(spec.method, spec.target, (*fields, *extra), body, chunked)


# -- refused requests ------------------------------------------------------------------

SOFT_TARGETS = (
    ("/a/../b", "dot-segment"),
    ("/a/./b", "dot-segment"),
    ("/a/%2e%2E/b", "encoded dot-segment"),
    ("/a/%2E/b", "encoded dot-segment"),
    ("/a/..;/b", "dot-segment before ;"),
    ("/..", "dot-segment"),
    ("/a%2f..%2fb", "dot-segment between encoded slashes"),
    ("/a\\..\\b", "dot-segment between backslashes"),
    ("http://x/p", "absolute-form target"),
    ("*", "asterisk-form target"),
)


BAD_HOSTS = [b"x y", b"a/b", b"a@b", b"x:8o", b"[::1", b"a?b", b"a#b"]  # RFC 9112 3.2: 400


@st.composite
def soft_requests(draw: st.DrawFn) -> Spec:
    """Bodiless requests the gateway must refuse with 400 and keep the connection."""
    method = draw(st.sampled_from(["GET", "DELETE", "OPTIONS", "HEAD"]))
    token = Field(b"X-Token", b"", "token")
    host = Field(b"Host", b"x", "host")
    what = draw(st.sampled_from(["target", "no host", "two hosts", "bad host"]))
    if what == "target":
        target, why = draw(st.sampled_from(SOFT_TARGETS))
        fields = [host, token]
    elif what == "no host":
        target, why, fields = draw(targets()), "no Host", [token]
    elif what == "bad host":
        bad = Field(draw(recased("Host")).encode(), draw(st.sampled_from(BAD_HOSTS)), "host")
        target, why, fields = draw(targets()), "a Host value that is no host", [bad, token]
    else:
        second = Field(draw(recased("Host")).encode(), draw(st.sampled_from(HOSTS)), "host")
        target, why, fields = draw(targets()), "two Host fields", [host, second, token]
    fields += draw(st.lists(end_to_end_field(), max_size=3))
    fields = draw(st.permutations(fields))
    return Spec(method, target, tuple(fields), kind="soft", statuses=frozenset({400}), why=why)


def _raw(head: bytes, payload: bytes = b"") -> bytes:
    return head.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n") + b"\r\n" + payload


POST = b"POST /f HTTP/1.1\nHost: x\nX-Token: {token}\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\n"
LONG_TARGET = b"/" + b"t" * (LIMITS["max_request_line_bytes"] + 10)
BIG_VALUE = b"v" * (LIMITS["max_header_bytes"] + 10)
MANY_FIELDS = b"".join(b"X-F%d: 1\n" % i for i in range(LIMITS["max_header_fields"] + 1))

# (why, statuses, the request's bytes): each is refused however the rest looks
FATAL: tuple[tuple[str, frozenset[int], bytes], ...] = tuple(
    (why, frozenset(statuses), raw)
    for why, statuses, raw in [
        ("Content-Length and Transfer-Encoding", {400},
         _raw(POST + b"Content-Length: 3\nTransfer-Encoding: chunked\n", b"3\r\nabc\r\n0\r\n\r\n")),
        ("Transfer-Encoding and Content-Length", {400},
         _raw(POST + b"Transfer-Encoding: chunked\nContent-Length: 3\n", b"3\r\nabc\r\n0\r\n\r\n")),
        ("two Content-Length, different values", {400},
         _raw(POST + b"Content-Length: 3\nContent-Length: 4\n", b"abcd")),
        ("two Content-Length, same value", {400},
         _raw(POST + b"Content-Length: 3\nContent-Length: 3\n", b"abc")),
        ("a Content-Length list", {400}, _raw(POST + b"Content-Length: 3, 3\n", b"abc")),
        ("a signed Content-Length", {400}, _raw(POST + b"Content-Length: +3\n", b"abc")),
        ("a negative Content-Length", {400}, _raw(POST + b"Content-Length: -1\n", b"abc")),
        ("a hex Content-Length", {400}, _raw(POST + b"Content-Length: 0x3\n", b"abc")),
        ("an empty Content-Length", {400}, _raw(POST + b"Content-Length:\n", b"abc")),
        ("an overflowing Content-Length", {400},
         _raw(POST + b"Content-Length: 99999999999999999999999\n", b"abc")),
        ("a chunk size that is not hex", {400}, _raw(CHUNKED, b"zz\r\nabc\r\n0\r\n\r\n")),
        ("a negative chunk size", {400}, _raw(CHUNKED, b"-3\r\nabc\r\n0\r\n\r\n")),
        ("a 0x chunk size", {400}, _raw(CHUNKED, b"0x3\r\nabc\r\n0\r\n\r\n")),
        ("an overflowing chunk size", {400},
         _raw(CHUNKED, b"fffffffffffffffff3\r\nabc\r\n0\r\n\r\n")),
        ("whitespace after a chunk size", {400}, _raw(CHUNKED, b"3 \r\nabc\r\n0\r\n\r\n")),
        ("chunk data longer than its size", {400}, _raw(CHUNKED, b"3\r\nabcXX\r\n0\r\n\r\n")),
        ("bare LF after a chunk size", {400}, _raw(CHUNKED, b"3\nabc\n0\n\n")),
        ("NUL in a chunk extension", {400}, _raw(CHUNKED, b"3;\x00\r\nabc\r\n0\r\n\r\n")),
        ("Content-Length in the trailers", {400},
         _raw(CHUNKED, b"3\r\nabc\r\n0\r\nContent-Length: 5\r\n\r\n")),
        ("obs-fold in the trailers", {400}, _raw(CHUNKED, b"3\r\nabc\r\n0\r\nT: a\r\n b\r\n\r\n")),
        # codings other than chunked: 501 (RFC 9112 6.1), or 400 where llhttp refuses first
        ("Transfer-Encoding gzip alone", {400, 501}, _raw(POST + b"Transfer-Encoding: gzip\n", b"abc")),
        ("Transfer-Encoding chunked, gzip", {400, 501},
         _raw(POST + b"Transfer-Encoding: chunked, gzip\n", b"3\r\nabc\r\n0\r\n\r\n")),
        ("Transfer-Encoding gzip, chunked", {400, 501},
         _raw(POST + b"Transfer-Encoding: gzip, chunked\n", b"3\r\nabc\r\n0\r\n\r\n")),
        ("Transfer-Encoding gzip, then chunked in a second field", {400, 501},
         _raw(POST + b"Transfer-Encoding: gzip\nTransfer-Encoding: chunked\n", b"3\r\nabc\r\n0\r\n\r\n")),
        ("Transfer-Encoding chunked twice", {400, 501},
         _raw(POST + b"Transfer-Encoding: chunked\nTransfer-Encoding: chunked\n", b"3\r\nabc\r\n0\r\n\r\n")),
        ("Transfer-Encoding chunked with a parameter", {400, 501},
         _raw(POST + b"Transfer-Encoding: chunked;q=1\n", b"3\r\nabc\r\n0\r\n\r\n")),
        ("Transfer-Encoding identity", {400, 501}, _raw(POST + b"Transfer-Encoding: identity\n")),
        ("Transfer-Encoding in an HTTP/1.0 request", {400},
         _raw(b"POST /f HTTP/1.0\nHost: x\nX-Token: {token}\nConnection: keep-alive\n"
              b"Transfer-Encoding: chunked\n", b"3\r\nabc\r\n0\r\n\r\n")),
        ("an upgrade offer with a body", {400},
         _raw(POST + b"Connection: Upgrade\nUpgrade: h2c\nContent-Length: 3\n", b"abc")),
        ("an upgrade offer with a chunked body", {400},
         _raw(CHUNKED + b"Connection: Upgrade\nUpgrade: h2c\n", b"3\r\nabc\r\n0\r\n\r\n")),
        ("NUL in a field value", {400}, _raw(POST + b"X-A: b\x00c\n")),
        ("NUL in a field name", {400}, _raw(POST + b"X-\x00A: b\n")),
        ("a control byte in a field value", {400}, _raw(POST + b"X-A: b\x01c\n")),
        ("DEL in a field value", {400}, _raw(POST + b"X-A: b\x7fc\n")),
        ("a bare CR in a field value", {400}, _raw(POST + b"X-A: b\rc\n")),
        ("obs-fold", {400}, _raw(POST + b"X-A: b\n c\n")),
        ("obs-fold with a tab", {400}, _raw(POST + b"X-A: b\n\tc\n")),
        ("obs-fold of Content-Length", {400}, _raw(POST + b"Content-Length:\n 3\n", b"abc")),
        ("whitespace before the colon", {400}, _raw(POST + b"X-A : b\n")),
        ("a Content-Length of 5000 digits, leading zeros", {400},
         _raw(POST + b"Content-Length: " + b"0" * 4997 + b"3\n", b"abc")),
        ("whitespace before the colon of Content-Length", {400},
         _raw(POST + b"Content-Length : 3\n", b"abc")),
        ("a field without a colon", {400}, _raw(POST + b"X-A\n")),
        ("a field with an empty name", {400}, _raw(POST + b": b\n")),
        ("a field name with a separator", {400}, _raw(POST + b"X(A): b\n")),
        ("a bare LF ending a field", {400}, b"POST /f HTTP/1.1\r\nHost: x\nX-Token: {token}\r\n\r\n"),
        ("bare LF line ends", {400}, b"POST /f HTTP/1.1\nHost: x\nX-Token: {token}\n\n"),
        ("an unknown method", {400}, _raw(b"FOOBAR /f HTTP/1.1\nHost: x\nX-Token: {token}\n")),
        ("a lower-case method", {400}, _raw(b"get /f HTTP/1.1\nHost: x\nX-Token: {token}\n")),
        ("a method with a separator", {400}, _raw(b"G@T /f HTTP/1.1\nHost: x\nX-Token: {token}\n")),
        ("HTTP/1.2", {400}, _raw(b"GET /f HTTP/1.2\nHost: x\nX-Token: {token}\n")),
        ("a space in the target", {400}, _raw(b"GET /f g HTTP/1.1\nHost: x\nX-Token: {token}\n")),
        ("a tab in the target", {400}, _raw(b"GET /f\tg HTTP/1.1\nHost: x\nX-Token: {token}\n")),
        ("a non-ASCII byte in the target", {400},
         _raw(b"GET /f\xff HTTP/1.1\nHost: x\nX-Token: {token}\n")),
        ("a request line over the limit", {414},
         _raw(b"GET " + LONG_TARGET + b" HTTP/1.1\nHost: x\nX-Token: {token}\n")),
        ("a request target over the limit, unterminated", {414}, b"GET " + LONG_TARGET),
        ("a field over the header limit", {431}, _raw(POST + b"X-Big: " + BIG_VALUE + b"\n")),
        ("too many fields", {431}, _raw(POST + MANY_FIELDS)),
        ("a Content-Length over max_body_bytes", {413},
         _raw(POST + b"Content-Length: %d\n" % (MAX_BODY_BYTES + 1), b"x" * 100)),
        ("a chunked body over max_body_bytes, not ended", {413},
         _raw(CHUNKED, b"%x\r\n" % (2 * MAX_BODY_BYTES) + b"x" * (MAX_BODY_BYTES + 1))),
    ]
)  # fmt: skip


FATAL_BY_WHY = {why: (statuses, raw) for why, statuses, raw in FATAL}


def fatal(why: str) -> Spec:
    statuses, raw = FATAL_BY_WHY[why]
    return Spec("", "", (), kind="fatal", statuses=statuses, why=why, raw=raw)


# -- writing a stream ------------------------------------------------------------------


@dataclass
class Stream:
    """Requests, each with its token, back to back as one byte string; ``ends[i]`` is the
    offset just past request ``i``."""

    specs: list[Spec]
    tokens: list[str]
    data: bytes = b""
    ends: list[int] = field(default_factory=list)
    head_ends: list[int] = field(default_factory=list)  # offsets just past each head

    def __post_init__(self) -> None:
        parts = [spec.wire(token) for spec, token in zip(self.specs, self.tokens, strict=True)]
        self.data = b"".join(parts)
        offset = 0
        for part in parts:
            head = part.find(b"\r\n\r\n")
            self.head_ends.append(offset + (head + 4 if head >= 0 else len(part) + 1))
            offset += len(part)
            self.ends.append(offset)

    def pieces(self, cuts: list[int], upto: int | None = None) -> list[bytes]:
        """The stream (or its first ``upto`` bytes) cut at ``cuts`` (any offsets)."""
        data = self.data if upto is None else self.data[:upto]
        points = sorted({c % (len(data) + 1) for c in cuts} - {0, len(data)})
        return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
