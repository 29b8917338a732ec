"""Every HTTP response the gateway writes itself: refusals, the 101, and the JSON error body the admin shares.

One module so that a status line is always ``HTTP/1.1 <code> <phrase>`` with the phrase taken from
:class:`http.HTTPStatus` (never typed by hand, never ``Error``), and every refusal, whether the listener's
own, an upstream's passed on, or the admin's, carries the same short JSON body ``{"error", "reason"}``.
Pure functions of values: no sockets, so the upgrade's answers are tested as bytes.
"""

from __future__ import annotations

import json
from http import HTTPStatus

Header = tuple[str, str]


def reason_phrase(status: int) -> str:
    """The standard reason phrase of ``status``; empty (allowed by RFC 9112, 4) for a code the enum lacks."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def status_line(status: int) -> str:
    """``HTTP/1.1 404 Not Found``: the first line of a response, without its CRLF."""
    return f"HTTP/1.1 {status} {reason_phrase(status)}"


def error_body(error: str, reason: str) -> dict[str, str]:
    """The body of every refusal: a short machine word and one sentence for people (never a credential)."""
    return {"error": error, "reason": reason}


def error_json(error: str, reason: str) -> bytes:
    """``error_body`` as the bytes a response carries (the admin's refusals, through aiohttp)."""
    return json.dumps(error_body(error, reason)).encode()


def refusal(status: int, error: str, reason: str, headers: tuple[Header, ...] = ()) -> bytes:
    """A whole HTTP refusal: the JSON error body, ``Connection: close``, ``headers`` (a Retry-After, an
    authentication challenge), and ``Upgrade: websocket`` on a 426 (RFC 9110, 15.5.22)."""
    body = error_json(error, reason)
    lines = [
        status_line(status),
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    if status == HTTPStatus.UPGRADE_REQUIRED:
        lines.append("Upgrade: websocket")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def switching_protocols(accept: str, extensions: str | None = None, subprotocol: str | None = None) -> bytes:
    """The 101 that completes a client's upgrade: ``accept`` is the Sec-WebSocket-Accept for its key,
    ``extensions`` the negotiated Sec-WebSocket-Extensions, ``subprotocol`` the one the upstream chose."""
    lines = [
        status_line(HTTPStatus.SWITCHING_PROTOCOLS),
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept}",
    ]
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
