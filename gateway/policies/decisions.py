"""What a policy returns: the decisions of the upgrade and message stages, as values.

Kept apart from :mod:`gateway.policies.base` (which re-exports them) because
process-wide policy state (``state.py``'s rate-limit buckets) holds a
:class:`Reply`, and ``base`` names that state in ``PolicyBuild``: the decisions
import nothing, so the two can import them without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["client", "server"]  # who sent the message


@dataclass(frozen=True, slots=True)
class Rejection:
    """Refuse the upgrade with this HTTP status; ``reason`` goes into the JSON body and the logs."""

    status: int
    error: str  # short machine word: "unauthorized", "throttled", "forbidden", ...
    reason: str  # one sentence for people; never includes credentials
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection (both legs) with this code and reason."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    """Drop the message and send ``text`` back to its sender as a text message (an error in a declared format)."""

    text: str


@dataclass(frozen=True, slots=True)
class Delay:
    """Not yet: the relay stops reading the sender for ``seconds``, then offers the message to the same policy
    again. Nothing is lost; what the sender already wrote waits in the relay's backlog, in order."""

    seconds: float


class _Drop:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()
"""Returned by a message-stage policy to swallow a message."""


@dataclass(slots=True)
class Message:
    direction: Direction
    is_text: bool
    payload: str | bytes  # str when is_text, bytes otherwise

    def size(self) -> int:
        """The payload's size on the wire (see :func:`wire_size`)."""
        return wire_size(self.is_text, self.payload)


def wire_size(is_text: bool, payload: str | bytes) -> int:
    """A payload's size on the wire: UTF-8 bytes for text. isascii() is O(1) on CPython's str, so only non-ASCII
    text pays for an encode."""
    return len(payload) if not is_text or payload.isascii() else len(payload.encode())  # type: ignore[union-attr]


MessageDecision = Message | _Drop | Close | Reply | Delay
