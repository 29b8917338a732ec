"""Where the demo page's "Use gateway" button points: the gateway route the config gives this echo server.

The tutorial's page offers to connect through the gateway. The address comes from the config the echo server was
started with, not a hard-coded 8082: the first API whose upstream is one of this server's contexts, on its first
enabled port (ws or wss as that port serves). So `wsgate run examples/ --values values/dev.yaml` moves the
button to port 18082 with everything else.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from gateway.config.models import EchoServer
from gateway.config.tree import Config

_LOCAL = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", ""})


def gateway_link(config: Config, echo: EchoServer) -> dict[str, Any] | None:
    """``{"api", "scheme", "port", "path"}`` of the gateway route to ``echo``; None when no API fronts it."""
    contexts = {c.path for c in echo.contexts}
    for name, loaded in sorted(config.apis.items(), key=lambda item: (item[0] != "EchoWS", item[0])):
        api = loaded.model
        for endpoint in api.upstream.endpoints:
            try:
                parts = urlsplit(endpoint.url)
                number = parts.port or (443 if parts.scheme == "wss" else 80)
            except ValueError:
                continue
            host = (parts.hostname or "").lower()
            if number != echo.port or not (host in _LOCAL or host == echo.host.lower()):
                continue
            if (parts.path or "/") not in contexts:
                continue
            for port_name in api.ports:
                port = config.ports.get(port_name)
                if port is None or not port.model.enabled:
                    continue
                return {"api": name, "scheme": "wss" if port.model.tls is not None else "ws",
                        "port": port.model.port, "path": api.path}
    return None
