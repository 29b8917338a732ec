"""What the listener needs from a relay, whichever one carries the connection.

Two relays implement it: ``relay.fast.ByteRelay`` (frames pass as bytes) and
``relay.message.MessageRelay`` (messages pass through the message stage). The
listener builds one after both handshakes and drives it only through this
protocol; the registry closes it through ``close`` on drain, revocation and
shutdown.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.policies.base import ConnectionContext


# Seconds a closing connection gives its peers to finish the closing handshake (answer the close frame, close
# TCP) before the relay aborts them: both relays, on every close (a peer's, a vanished leg's, a drain's).
CLOSE_TIMEOUT = 5.0


def peer_close(failed_is_client: bool) -> tuple[int, str]:
    """What the other leg is told when one leg failed or vanished: a vanished client's upstream goes away (1001);
    a client whose upstream failed is told the gateway's upstream broke (1014)."""
    return (1001, "going away") if failed_is_client else (1014, "bad gateway")


class Relay(Protocol):
    """One proxied connection between a client transport and an upstream transport."""

    @property
    def conn(self) -> ConnectionContext:
        """The connection's context (API, application, counters)."""
        ...

    @property
    def done(self) -> asyncio.Future[None]:
        """Resolved once both legs are closed and the relay's ``on_closed`` callback ran."""
        ...

    def start(self) -> None:
        """Take over both transports and relay what was read past the handshakes."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close both legs with ``code`` and ``reason``, bounded by a deadline (idempotent)."""
        ...
