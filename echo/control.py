"""Plain HTTP answers of the echo server: the tutorial's control endpoints and the demo page.

``GET /startDemoAPI`` publishes every configured context, or only the one
named by ``?relativeURI=/api/demo/``; ``GET /stopDemoAPI`` unpublishes the
same way (its clients are closed with 1001). Both answer a small JSON body.

As in the tutorial, ``startDemoAPI?relativeURI=/any/path/`` also publishes a
context the config does not declare (a room with default settings). That,
and any start or stop that departs from the config, is drift: the server
logs it and reports it (:meth:`echo.server.EchoService.drift`), and
``wsgate plan --from http://ADMIN`` shows it.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from importlib import resources
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Response

from .rooms import Room, published_paths

START, STOP = "/startDemoAPI", "/stopDemoAPI"
# The tutorial's own URLs (webMethods' service invocation form) answer as the short ones.
CONTROL_ALIASES = {"/invoke/websocketDemo:startDemoAPI": START, "/invoke/websocketDemo:stopDemoAPI": STOP}
CONTROL_PATHS = frozenset({START, STOP, *CONTROL_ALIASES})

# File name → content type of what the demo page is made of.
STATIC_FILES = {"demo.html": "text/html; charset=utf-8", "demo.css": "text/css", "demo.js": "text/javascript",
                # The shipment tracking page of the push example (examples/push/, docs/push.md).
                "track.html": "text/html; charset=utf-8", "track.js": "text/javascript"}
# The page at / and where the tutorial opens it (/websocketDemoPackage/demo.html, with its relative assets).
PAGE_PATHS = {"/": "demo.html", **{f"/{name}": name for name in STATIC_FILES},
              **{f"/websocketDemoPackage/{name}": name for name in STATIC_FILES}}

# The page's inline config block; the server fills in the live contexts.
CONFIG_MARKER = b'<script id="echo-config" type="application/json">{}</script>'

# The page talks to any ws:// host (the echo server or a gateway) and loads nothing else.
CSP = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'"


def response(status: int, body: bytes, content_type: str, extra: Iterable[tuple[str, str]] = ()) -> Response:
    status = HTTPStatus(status)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def json_response(status: int, payload: Mapping[str, Any]) -> Response:
    return response(status, json.dumps(payload).encode() + b"\n", "application/json")


def load_static() -> dict[str, bytes]:
    """Read the demo page's files once, from the installed package."""
    folder = resources.files("echo") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_FILES}


def page_response(name: str, static: Mapping[str, bytes], rooms: Iterable[Room],
                  gateway: Mapping[str, Any] | None = None) -> Response:
    body = static[name]
    if name == "demo.html":
        contexts = [{"path": r.path, "mode": r.context.mode, "published": r.published} for r in rooms]
        # "</" inside a <script> block would end it early; "<\/" is the same JSON string.
        blob = json.dumps({"contexts": contexts, "gateway": gateway}).replace("</", "<\\/").encode()
        body = body.replace(CONFIG_MARKER, CONFIG_MARKER.replace(b"{}", blob))
    return response(200, body, STATIC_FILES[name], [("Content-Security-Policy", CSP)])


# A context started over HTTP must look like one the config could declare; and there is a cap, so a loop of
# requests cannot grow the server without bound.
RELATIVE_URI = re.compile(r"^/[^\s?#]{0,255}$")
MAX_UNDECLARED_CONTEXTS = 64


def control_response(
    path: str,
    query: Mapping[str, list[str]],
    rooms: Mapping[str, Room],
    publish: Callable[[Room], None],
    unpublish: Callable[[Room], None],
    start_undeclared: Callable[[str], Room | None] | None = None,
) -> Response:
    """Answer ``/startDemoAPI`` or ``/stopDemoAPI``: act on one context or all of them.

    ``start_undeclared`` creates a context the config does not declare (None when full); without it an
    unknown ``relativeURI`` is a 404.
    """
    path = CONTROL_ALIASES.get(path, path)
    wanted = query.get("relativeURI", [])
    if wanted:
        uri = wanted[0]
        if uri not in rooms and path == START and start_undeclared is not None and RELATIVE_URI.match(uri):
            room = start_undeclared(uri)
            if room is None:
                return json_response(429, {"error": "too many contexts started over HTTP",
                                           "limit": MAX_UNDECLARED_CONTEXTS})
            return json_response(200, {"status": "started", "contexts": [uri], "declared": False,
                                       "published": published_paths(rooms.values())})
        if uri not in rooms:
            return json_response(404, {"error": "unknown context", "relativeURI": uri, "contexts": sorted(rooms)})
        targets = [rooms[uri]]
    else:
        targets = list(rooms.values())
    act = publish if path == START else unpublish
    for room in targets:
        act(room)
    return json_response(
        200,
        {
            "status": "started" if path == START else "stopped",
            "contexts": [room.path for room in targets],
            "published": published_paths(rooms.values()),
        },
    )
