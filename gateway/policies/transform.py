"""Transform policy: operator code rewrites or drops messages at one stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import Direction


@dataclass(frozen=True, slots=True)
class TransformContext:
    """What a transform callable receives for each message.

    Return the new payload (``str`` for text, ``bytes`` for binary; returning
    the other type changes the message type), or ``gateway.DROP`` to swallow it.
    """

    direction: Direction  # "client": client -> native server; "server": the other way
    is_text: bool
    payload: str | bytes
    api: str
    application: str | None
    connection_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
