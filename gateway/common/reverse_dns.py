"""Reverse DNS of peer addresses, cached, with a timeout; forward-confirmed, since PTR records can lie.

What identify's ``by: [hostname]`` asks; one resolver per process (``PolicyState.resolver``), so the cache
outlives reloads.
"""

from __future__ import annotations

import asyncio
import socket
import time


class HostnameResolver:
    """Reverse DNS of peer addresses, cached, with a timeout; forward-confirmed, since PTR records can lie."""

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._cache: dict[str, tuple[float, str | None]] = {}

    async def lookup(self, ip: str, timeout: float) -> str | None:
        now = time.monotonic()
        cached = self._cache.get(ip)
        if cached is not None and cached[0] > now:
            return cached[1]
        loop = asyncio.get_running_loop()
        try:
            name = await asyncio.wait_for(loop.run_in_executor(None, _confirmed_name, ip), timeout)
        except (TimeoutError, OSError):
            name = None
        self._cache[ip] = (now + self.ttl, name)
        return name


def _confirmed_name(ip: str) -> str | None:
    try:
        name, _, _ = socket.gethostbyaddr(ip)
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        return None
    return name if ip in addresses else None
