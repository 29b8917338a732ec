"""Every HTTP answer wsgate writes: status phrases from ``http.HTTPStatus``, short JSON error bodies.

Two writers use it: the port listeners' refusals of an upgrade (written as bytes on the client's transport,
``refusal_bytes``) and the admin listener (aiohttp writes the status line, also from ``http.HTTPStatus``; the
admin takes its error bodies from ``error_body``). So a refusal reads the same wherever it comes from:
``{"error": WORD, "reason": TEXT}``, never a plain-text ``500 Error``.
"""

from __future__ import annotations

import json
from http import HTTPStatus


def phrase(status: int) -> str:
    """The reason phrase of ``status`` (every status wsgate writes is an ``HTTPStatus``)."""
    return HTTPStatus(status).phrase


def error_body(error: str, reason: str) -> bytes:
    """A refusal's body: one word for machines, one sentence for people."""
    return json.dumps({"error": error, "reason": reason}).encode()


def refusal_bytes(status: int, error: str, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """An HTTP refusal as a listener writes it on the client's transport: a short JSON body, ``Connection:
    close``, and ``Upgrade: websocket`` with a 426."""
    body = error_body(error, reason)
    lines = [
        f"HTTP/1.1 {status} {phrase(status)}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    if status == HTTPStatus.UPGRADE_REQUIRED:
        lines.append("Upgrade: websocket")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
