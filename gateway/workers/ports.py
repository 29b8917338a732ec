"""The ports a supervisor's workers share, held by the supervisor for its whole life so that no other gateway joins.

Workers listen with SO_REUSEPORT and the kernel spreads connections over
them. The kernel lets any socket of the same user join such a port, so a
second `wsgate run --workers N` on the same port used to bind fine, and two
unrelated gateways split its connections. So the supervisor holds every port
before its workers bind:

- a configured number is **probed**: bound once without SO_REUSEPORT (with
  SO_REUSEADDR, as the workers bind, so an earlier run's connections in
  TIME_WAIT do not count), which fails with EADDRINUSE when any socket listens
  there: another gateway's workers, a single-process gateway, any program.
  Then the supervisor takes a **lock** named after the address, an abstract
  Unix socket (Linux): a second supervisor that passed its probe at the same
  moment, or while every worker of this one is being restarted, fails on the
  lock. The kernel frees it however the supervisor ends, even by SIGKILL, and
  it is per network namespace, as ports are.
- port 0 gets a number from the kernel, kept by a bound, never-listening
  SO_REUSEPORT socket (it gets no connections; without SO_REUSEADDR it also
  fails another process's probe of that number).

Why not a held socket on the configured port itself: one with SO_REUSEPORT
and without SO_REUSEADDR blocks probes but cannot bind while connections of
an earlier run linger in TIME_WAIT; with SO_REUSEADDR it binds, but then
blocks no probe. Why not one listening socket that the supervisor hands to
every worker: it spreads connections far worse (docs/deploying.md,
``benchmarks/accept_balance.py``).
"""

from __future__ import annotations

import hashlib
import socket
import sys

LOCK_PREFIX = "wsgate-port"


class PortHold:
    """One port kept for the workers: its number and what keeps it (closed by ``close``)."""

    __slots__ = ("number", "_socket")

    def __init__(self, number: int, sock: socket.socket | None) -> None:
        self.number = number
        self._socket = sock

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def hold_port(host: str, port: int, probe: bool = True) -> PortHold:
    """Keep ``host:port`` for this supervisor's workers (port 0: a fresh number); raises OSError (EADDRINUSE)
    when another process holds it. ``probe=False``: the number is this supervisor's already (its own workers
    may listen there, as when a port's host or name changes on reload), only the lock is taken."""
    if port == 0:
        return _fresh_number(host)
    if probe:
        _probe(host, port)
    return PortHold(port, _lock(host, port))


def _fresh_number(host: str) -> PortHold:
    family = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0]
    holder = socket.socket(family, socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, 0))  # bound, never listening: it gets no connections, only keeps the number
    except BaseException:
        holder.close()
        raise
    return PortHold(holder.getsockname()[1], holder)


def _probe(host: str, port: int) -> None:
    """Bind every address ``host`` resolves to (as the workers will) without SO_REUSEPORT, then let go."""
    seen = set()
    for family, kind, proto, _, address in socket.getaddrinfo(host or None, port, family=socket.AF_UNSPEC,
                                                              type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        if (family, address) in seen:
            continue
        seen.add((family, address))
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


def lock_name(host: str, port: int) -> str:
    """The abstract socket name of ``host:port``'s lock (readable in ``ss -xl`` unless the host is very long)."""
    name = f"{LOCK_PREFIX}:{host}:{port}"
    if len(name) > 100:  # sun_path holds 108 bytes
        name = f"{LOCK_PREFIX}:{hashlib.sha256(name.encode()).hexdigest()[:32]}:{port}"
    return name


def _lock(host: str, port: int) -> socket.socket | None:
    if not sys.platform.startswith("linux"):
        return None  # no abstract sockets: the probe alone guards the port
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind("\0" + lock_name(host, port))
    except BaseException:
        lock.close()
        raise
    return lock
