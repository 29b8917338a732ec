"""One pass over an ordinary WebSocket upgrade request head; anything unusual is websockets' to judge.

Nearly every client sends the same shape of head: ``GET /path HTTP/1.1``, each header once, ``Upgrade:
websocket``, ``Connection: Upgrade``, a 16-byte key, version 13. ``plain_upgrade`` recognises exactly that
shape in a single loop over the lines and returns what the listener needs; for every other head it returns
None and the listener runs websockets' parser and handshake checks (``ServerProtocol``), which word the
refusal (400, 405, 426, 431, 505). The invariant: this module accepts a subset of what that path accepts,
with the same result (path, headers, key), so it may only make an upgrade cheaper, never change its outcome.
Conservative on purpose: any header name seen twice, any byte outside the header grammar, a body, a
transfer coding or a line near websockets' limits sends the head the long way.

``has_dot_segment`` is the path rule both ways share: a path with a ``.`` or ``..`` segment in any spelling is
refused (400) before any route is looked up.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from typing import NamedTuple
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS

# RFC 9110 header grammar, shared with the upstream 101 check (gateway/wire/upstream_response.py).
HEADER_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
HEADER_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")
_TARGET = re.compile(rb"/[\x21-\x7e]*")  # origin-form: visible ASCII, no space or control byte
_TOKEN_LIST = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+(?:[ \t]*,[ \t]*[-!#$%&'*+.^_`|~0-9a-zA-Z]+)*")
# Headers whose presence means more than a plain upgrade: a body, or a value websockets must parse further.
_UNUSUAL = frozenset({b"transfer-encoding", b"content-length"})


def header_field(line: bytes) -> tuple[bytes, bytes] | None:
    """``line``'s name and whitespace-trimmed value if it is a well-formed header field; else None."""
    name, colon, value = line.partition(b":")
    if not colon or not HEADER_TOKEN.fullmatch(name):
        return None
    value = value.strip(b" \t")
    if not HEADER_VALUE.fullmatch(value):
        return None
    return name, value


class PlainUpgrade(NamedTuple):
    """An ordinary upgrade request: its target (path and query), its headers, its Sec-WebSocket-Key."""

    target: str
    headers: Headers
    key: str


def plain_upgrade(head: bytes) -> PlainUpgrade | None:
    """The request in ``head`` (ending in CRLF CRLF) if it is an ordinary, valid upgrade; else None."""
    lines = head.split(b"\r\n")
    # The head ends in CRLF CRLF: the split leaves two empty strings at the end.
    if len(lines) > MAX_NUM_HEADERS + 3 or lines[-1] or lines[-2]:
        return None
    request_line = lines[0]
    if len(request_line) + 2 > MAX_LINE_LENGTH or not request_line.startswith(b"GET "):
        return None
    target, space, protocol = request_line[4:].partition(b" ")
    if not space or protocol != b"HTTP/1.1" or not _TARGET.fullmatch(target):
        return None
    seen: set[bytes] = set()
    pairs: list[tuple[str, str]] = []
    key = version = upgrade = None
    connection_upgrade = False
    for line in lines[1:-2]:
        if len(line) + 2 > MAX_LINE_LENGTH:
            return None
        field = header_field(line)
        if field is None:
            return None
        raw_name, raw_value = field
        lower = raw_name.lower()
        if lower in seen or lower in _UNUSUAL:
            return None
        seen.add(lower)
        if lower == b"connection":
            if not _TOKEN_LIST.fullmatch(raw_value):
                return None
            connection_upgrade = any(t.strip(b" \t").lower() == b"upgrade" for t in raw_value.split(b","))
        elif lower == b"upgrade":
            upgrade = raw_value
        elif lower == b"sec-websocket-key":
            key = raw_value
        elif lower == b"sec-websocket-version":
            version = raw_value
        elif lower == b"sec-websocket-protocol" and not _TOKEN_LIST.fullmatch(raw_value):
            return None
        pairs.append((raw_name.decode("ascii"), raw_value.decode("iso-8859-1")))
    if not connection_upgrade or upgrade is None or upgrade.lower() != b"websocket" or version != b"13":
        return None
    if key is None or len(key) != 24:
        return None
    try:
        if len(b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    headers = Headers()
    for name, value in pairs:
        headers[name] = value  # Headers appends: a plain head has each name once
    return PlainUpgrade(target.decode("ascii"), headers, key.decode("ascii"))


_DOT_SEGMENTS = frozenset({".", ".."})
_DECODE_ROUNDS = 3  # %252e is "%2e" decoded once and "." twice: an upstream may decode more than once


def has_dot_segment(path: str) -> bool:
    """Whether ``path`` holds a ``.`` or ``..`` segment in any spelling an upstream might resolve.

    Checked on the raw path and on each percent-decoding of it (``%2e%2e``, ``%2E.``, ``%252e%252e``), with
    ``\\`` taken as a separator like ``/`` (``..\\x``, ``..%5c``), an escaped separator splitting segments too
    (``..%2f``), and ``;`` parameters ignored (``..;x``, which Tomcat-style servers resolve as ``..``). Such a
    path is refused rather than normalised: a client has no reason to send one (browsers and websockets
    resolve dot segments before sending), and an upstream that resolves it again after a ``strip_prefix``
    join would serve a path above the base the operator exposed.
    """
    if "." not in path and "%" not in path:
        return False  # the common case: nothing that is, or decodes to, a dot
    text = path
    for _ in range(_DECODE_ROUNDS + 1):
        for segment in text.replace("\\", "/").split("/"):
            if segment.split(";", 1)[0] in _DOT_SEGMENTS:
                return True
        decoded = unquote(text)  # not unquote_plus: a '+' in a path is a plus
        if decoded == text:
            return False
        text = decoded
    return False
