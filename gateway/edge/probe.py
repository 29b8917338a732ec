"""One WebSocket handshake to an upstream URL, reported as what came back.

Shared by active health checks and ``validate --probe`` / ``plan --probe``:
a real opening handshake (no messages), then a clean close; or a TCP (and
TLS) connect only. Nothing raises: every outcome is a :class:`ProbeResult`,
worded for people; ``probe_config`` probes a whole config in parallel and
``probe_diagnostics`` turns failures into WSG150 errors at each URL's line.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from ..build.routes import upstream_headers, upstream_ssl_context
from ..common.log import PROTOCOL_LOG
from ..config.diagnostics import Diagnostic, error
from ..config.source import load
from ..config.tree import Location

if TYPE_CHECKING:
    from ..config.tree import Config



@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe: ``ok`` when the endpoint answered 101 (or accepted the connection)."""

    ok: bool
    detail: str  # "101 Switching Protocols", "404 Not Found at /api/demo", "connection refused", ...
    status: int | None = None


async def probe(url: str, *, timeout: float, ssl_context: ssl.SSLContext | None = None,
                server_hostname: str | None = None, tcp_only: bool = False,
                headers: Sequence[tuple[str, str]] = ()) -> ProbeResult:
    """Open a handshake to ``url`` within ``timeout`` seconds and say what came back.

    ``headers`` are the API's ``upstream.headers``: an upstream that requires its
    Authorization refuses a probe without it, as it would a real upgrade."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    context = (ssl_context or ssl.create_default_context()) if secure else None
    try:
        async with asyncio.timeout(timeout):
            if tcp_only:
                host = parts.hostname or ""
                port = parts.port or (443 if secure else 80)
                _, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=(server_hostname or host) if secure else None)
                writer.close()
                return ProbeResult(True, "connected")
            kwargs = {"server_hostname": server_hostname} if secure and server_hostname else {}
            async with connect(url, ssl=context, open_timeout=None, close_timeout=timeout, compression=None,
                               additional_headers=list(headers) or None, logger=PROTOCOL_LOG, **kwargs):  # type: ignore[arg-type]
                return ProbeResult(True, "101 Switching Protocols", 101)
    except InvalidStatus as exc:
        response = exc.response
        where = parts.path or "/"
        return ProbeResult(False, f"{response.status_code} {response.reason_phrase} at {where}".replace("  ", " "),
                           response.status_code)
    except TimeoutError:
        return ProbeResult(False, f"no answer within {timeout:g} s")
    except ConnectionRefusedError:
        return ProbeResult(False, "connection refused")
    except ssl.SSLError as exc:  # before OSError: SSLError is one
        return ProbeResult(False, f"TLS error: {exc.reason or exc.__class__.__name__}")
    except InvalidHandshake as exc:
        return ProbeResult(False, f"invalid handshake: {exc}")
    except OSError as exc:
        return ProbeResult(False, f"connection failed: {exc.strerror or exc.__class__.__name__}")


def shown(url: str) -> str:
    """``url`` without the user and password it may carry: what logs and reports may show."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


@dataclass(frozen=True, slots=True)
class EndpointProbe:
    """One upstream URL of the config, where it is written, and what its probe found."""

    api: str
    url: str
    location: Location | None
    source_line: str | None
    result: ProbeResult


async def probe_config(config: Config, paths: Sequence[str | Path], timeout: float = 5.0) -> list[EndpointProbe]:
    """Probe every upstream URL of a checked config, all at once, each within ``timeout`` seconds.

    ``paths`` are re-read for the source map only, so each result points at
    its URL's line; the TLS settings (CA, client certificate, SNI name) are
    the ones the runtime would use.
    """
    loaded = load([Path(p) for p in paths])
    docs = {doc.data.get("name"): doc for doc in loaded.documents
            if isinstance(doc.data, dict) and doc.data.get("kind") == "API"}
    targets = []
    for name, api in sorted(config.apis.items()):
        if api.model.upstream is None:
            continue  # message routes: their integrations are not probed (yet)
        context = upstream_ssl_context(api)
        hostname = api.model.upstream.tls.server_hostname
        headers = upstream_headers(api.model, os.environ)
        doc = docs.get(name)
        for i, endpoint in enumerate(api.model.upstream.endpoints):
            location = doc.value_at(("upstream", "endpoints", i, "url")) if doc is not None else None
            lines = loaded.sources.get(location.file, []) if location is not None else []
            line = lines[location.line - 1] if location is not None and 0 < location.line <= len(lines) else None
            targets.append((name, endpoint.url, location, line, context, hostname, headers))
    results = await asyncio.gather(*(probe(url, timeout=timeout, ssl_context=context, server_hostname=hostname,
                                           headers=headers)
                                     for _, url, _, _, context, hostname, headers in targets))
    return [EndpointProbe(name, shown(url), location, line, result)
            for (name, url, location, line, *_), result in zip(targets, results, strict=True)]


def probe_diagnostics(probes: Sequence[EndpointProbe]) -> list[Diagnostic]:
    """A WSG150 error at the URL of every endpoint whose handshake did not answer 101."""
    out = []
    for p in probes:
        if p.result.ok:
            continue
        hint = {404: "the backend has nothing at this path: check the path and its trailing '/'",
                None: "check the host, the port and that the backend is running"}.get(
            p.result.status, "the backend refused the upgrade; check the path and what it expects")
        if p.result.detail.startswith("TLS error"):
            hint = "check the backend's certificate, `upstream.tls.ca_file` and `server_hostname`"
        out.append(error("WSG150", f"upstream probe of API '{p.api}': {p.result.detail}", p.location,
                         source_line=p.source_line, hint=hint))
    return out
