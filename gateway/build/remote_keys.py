"""Remote JWKS: an issuer's signing keys fetched over HTTPS (``jwt: {jwks_url: ...}``), kept and refreshed.

Keys committed to git (``jwks_file``) change with a reload; an issuer that
rotates its keys on its own schedule publishes them at a URL instead. A
:class:`RemoteKeySet` holds the last good keys of one URL for the life of the
process (``PolicyState.jwks`` hands out one per URL and settings, so a reload
keeps them) and fetches:

- when a config that uses it starts serving (``prefetch``, off any upgrade's
  path): the first upgrade finds keys;
- in the background once they are older than ``jwks_max_age``;
- at once for a token whose ``kid`` it does not know (a rotation), at most
  once per ``jwks_min_refresh_interval`` (a flood of made-up kids costs the
  issuer one fetch per interval), the upgrade waiting at most ``jwks_timeout``.

A failed fetch (down, slow, not a JWKS document) keeps the last good keys and
is logged; concurrent callers share one fetch in flight.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from ..common.http_client import SharedHTTPClient

if TYPE_CHECKING:  # PyJWT and cryptography load only for configs that verify tokens: the parser is passed in
    from .jwt_keys import VerifyingKey

log = structlog.get_logger("wsgate.jwks")

MAX_JWKS_BYTES = 1024 * 1024


class RemoteKeySet:
    """The keys published at one JWKS URL (see the module docstring)."""

    def __init__(self, url: str, http: SharedHTTPClient, ssl_context: ssl.SSLContext | None, timeout: float,
                 max_age: float, min_refresh_interval: float, parse: Callable[[str], list[VerifyingKey]]) -> None:
        """``parse``: ``jwt_keys.parse_jwks`` (raises ValueError for a document it cannot use)."""
        self.url = url
        self.parse = parse
        self.http = http
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.max_age = max_age
        self.min_refresh_interval = min_refresh_interval
        self.keys: tuple[VerifyingKey, ...] = ()
        self.fetched_at: float | None = None  # monotonic time of the last good fetch
        self.attempted_at: float | None = None  # monotonic time the last fetch began
        self.fetches = 0  # fetches begun (the tests count them)
        self._inflight: asyncio.Task[bool] | None = None

    def configure(self, timeout: float, max_age: float, min_refresh_interval: float) -> None:
        """A reload's settings for the same URL (the keys stay)."""
        self.timeout, self.max_age, self.min_refresh_interval = timeout, max_age, min_refresh_interval

    def kids(self) -> frozenset[str | None]:
        return frozenset(k.kid for k in self.keys)

    def knows(self, kid: str | None) -> bool:
        """Whether a token with this ``kid`` has a key to try (no kid: any key is tried)."""
        return bool(self.keys) and (kid is None or any(k.kid in (None, kid) for k in self.keys))

    def may_refresh(self, now: float | None = None) -> bool:
        """Whether an unknown kid may ask for a fetch now (rate limit), or one is already in flight."""
        if self._inflight is not None:
            return True
        now = time.monotonic() if now is None else now
        return self.attempted_at is None or now - self.attempted_at >= self.min_refresh_interval

    def stale(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.fetched_at is None or now - self.fetched_at >= self.max_age

    def prefetch(self) -> None:
        """Fetch in the background unless keys are there and fresh (a config starts serving)."""
        if self.stale():
            self._start()

    def refresh_in_background(self) -> None:
        """Keys past ``max_age``: fetch again, the upgrade does not wait (it uses the keys it has)."""
        if self.stale() and self.may_refresh():
            self._start()

    async def refresh(self) -> bool:
        """Fetch now (or join the fetch in flight) and wait for it, at most ``timeout``; True when keys changed
        or were confirmed."""
        task = self._start()
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except TimeoutError:
            return False

    def _start(self) -> asyncio.Task[bool]:
        if self._inflight is None:
            self.attempted_at = time.monotonic()
            self.fetches += 1
            task = asyncio.get_running_loop().create_task(self._fetch(), name="wsgate-jwks-fetch")
            self._inflight = task

            def done(_: asyncio.Task[bool]) -> None:
                self._inflight = None

            task.add_done_callback(done)
        return self._inflight

    async def _fetch(self) -> bool:
        import aiohttp  # ~0.2 s to import: only configs with a jwks_url load it

        try:
            async with asyncio.timeout(self.timeout):
                async with self.http.session().get(
                        self.url, ssl=self.ssl_context if self.ssl_context is not None else True,
                        allow_redirects=False, headers={"Accept": "application/json"}) as response:
                    body = await response.content.read(MAX_JWKS_BYTES + 1)
                    status = response.status
            if status != 200:
                raise ValueError(f"answered {status}")
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("the document is larger than 1 MiB")
            keys = self.parse(body.decode("utf-8", errors="replace"))
        except TimeoutError:
            return self._failed(f"no answer within {self.timeout:g} s")
        except (aiohttp.ClientError, ValueError) as exc:
            return self._failed(str(exc) or exc.__class__.__name__)
        if not keys:
            return self._failed("the document holds no usable key")
        changed = frozenset(k.kid for k in keys) != self.kids()
        self.keys = tuple(keys)
        self.fetched_at = time.monotonic()
        if changed:
            log.info("jwks_keys_loaded", url=self.url, keys=len(keys), kids=sorted(str(k.kid) for k in keys))
        return True

    def _failed(self, reason: str) -> bool:
        log.warning("jwks_fetch_failed", url=self.url, reason=reason, kept_keys=len(self.keys))
        return False


def jwks_ssl_context(url: str, cafile: str | None) -> ssl.SSLContext | None:
    """The verifying context for an ``https://`` JWKS URL (None for loopback ``http://``)."""
    if not url.lower().startswith("https://"):
        return None
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
