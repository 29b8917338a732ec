"""The upstream TCP connect of a plain ``ws://`` upgrade: resolve (cached), connect, wrap in a transport.

``loop.create_connection`` costs about 20 µs of Python per call on top of
the ``connect`` itself (a resolution coroutine even for an IP literal, the
socket coroutine, a waiter future): several per cent of an upgrade, paid by
every one. Here the address is an IP literal or a cached resolution, the
socket is connected by hand (one future, woken by the loop when the socket
turns writable) and wrapped in the loop's own socket transport.

Hostnames are resolved with the loop's ``getaddrinfo`` (in its executor) and
the answer kept for ``DNS_TTL`` seconds, as Envoy's default DNS refresh does:
a reconnect storm to ``ws://backend:8080`` makes one lookup, not thousands,
while a changed record is seen within seconds. Failed lookups are not kept.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections.abc import Callable
from typing import Any

DNS_TTL = 5.0
DNS_CACHE_LIMIT = 1024

Address = tuple[int, Any]  # (family, sockaddr)

_resolved: dict[tuple[str, int], tuple[float, list[Address]]] = {}


def _literal(host: str, port: int) -> list[Address] | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if ip.version == 6:
        return [(socket.AF_INET6, (str(ip), port, 0, 0))]
    return [(socket.AF_INET, (str(ip), port))]


async def resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[Address]:
    """The addresses to try for ``host:port``, in the resolver's order; raises OSError (gaierror) on failure."""
    literal = _literal(host, port)
    if literal is not None:
        return literal
    key = (host, port)
    now = time.monotonic()
    cached = _resolved.get(key)
    if cached is not None and cached[0] > now:
        return cached[1]
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[Address] = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    if not addresses:
        raise OSError(f"getaddrinfo({host!r}) returned no address")
    if len(_resolved) >= DNS_CACHE_LIMIT:
        _resolved.clear()
    _resolved[key] = (now + DNS_TTL, addresses)
    return addresses


def forget_resolutions() -> None:
    """Drop every cached resolution (tests; an operator's reload does not need it: entries expire)."""
    _resolved.clear()


async def open_connection(loop: asyncio.AbstractEventLoop, host: str, port: int,
                          protocol_factory: Callable[[], asyncio.Protocol]) -> asyncio.Transport:
    """A connected transport to ``host:port`` speaking ``protocol_factory()``; each address in turn, like
    ``create_connection``. Raises OSError (refused, unreachable, resolution failed) with the last address's
    error. Cancellation closes the socket."""
    last: OSError | None = None
    for family, address in await resolve(loop, host, port):
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # the proto asyncio sets NODELAY by
        try:
            sock.setblocking(False)
            await _connect(loop, sock, address)
            # The selector loop's own constructor for a connected socket (what create_connection ends with):
            # sets TCP_NODELAY, schedules connection_made, then starts reading. Another loop implementation
            # takes the socket through the public (slower) path.
            make = getattr(loop, "_make_socket_transport", None)
            if make is not None:
                transport: asyncio.Transport = make(sock, protocol_factory())
                return transport
            transport, _ = await loop.create_connection(protocol_factory, sock=sock)
            return transport
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    assert last is not None
    raise last


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: Any) -> None:
    try:
        sock.connect(address)
        return  # connected at once (seen on loopback)
    except (BlockingIOError, InterruptedError):
        pass
    fd = sock.fileno()
    writable: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, _set_done, writable)
    try:
        await writable
    finally:
        loop.remove_writer(fd)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, f"Connect call failed {address}: {os.strerror(error)}")


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

