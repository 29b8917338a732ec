"""The gateway process's one HTTP client: an aiohttp ``ClientSession`` with a keep-alive pool.

The connect-time authorizer and remote JWKS documents are asked over it
(``gateway/policies/authorizer.py``, ``gateway/build/remote_keys.py``). One
session per process, not one per policy or per config: its pool of kept-alive
connections outlives a reload, so an authorizer that did not change is not
reconnected to (and TLS-handshaken with) after every config swap. TLS
settings are per request (``ssl=``), made once per config by the policy that
asks, so one pool serves endpoints with different CAs or client certificates.

Made on first use inside the running loop (a ``ClientSession`` belongs to one
loop), closed by ``PolicyState.aclose`` when the gateway stops.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # aiohttp costs ~0.2 s to import: only gateways that ask something over HTTP load it
    import aiohttp

# Connections kept per process in all, and per host: an authorizer is one host; bound it so a slow one cannot
# open a socket per waiting upgrade.
POOL_LIMIT = 100
POOL_LIMIT_PER_HOST = 32
KEEPALIVE_SECONDS = 30.0


class SharedHTTPClient:
    """Lazily made, process-wide aiohttp session (see the module docstring)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session, made now if needed (call from inside the gateway's event loop)."""
        session = self._session
        if session is None or session.closed:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=POOL_LIMIT, limit_per_host=POOL_LIMIT_PER_HOST,
                                             keepalive_timeout=KEEPALIVE_SECONDS)
            # No cookies (answers of one client's authorization must not follow another's) and no proxy from
            # the environment unless asked: trust_env stays off.
            session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                            auto_decompress=True)
            self._session = session
        return session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


def client_ssl_context(cafile: str | None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs or ``cafile``, and a client certificate when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context
