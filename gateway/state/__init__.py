"""Shared state: what must hold across workers and instances (active-connection slots, message budgets).

One small interface (:class:`SharedState`, in ``base``) and two backends:
``memory`` (one process, the default) and ``redis`` (every worker and every
instance pointed at the same Redis). Importing this package does not load the
Redis backend (the redis client is an optional dependency): :func:`open_state`
does, when the Gateway resource's ``state`` names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .base import UNAVAILABLE, OnStateError, SharedState, Taken
from .memory import MemoryStore

if TYPE_CHECKING:
    from ..config.models import MemoryState, RedisState


def open_state(settings: MemoryState | RedisState, env: Mapping[str, str], *, ca_file: str | None = None,
               instance: str | None = None) -> SharedState:
    """The backend the settings name, not started yet (``await state.start()``)."""
    if settings.backend == "memory":
        return MemoryStore()
    # The optional dependency's seam: the Redis backend (and the redis client it loads) only for `backend: redis`.
    from .redis import RedisStore, connection_options

    return RedisStore(connection_options(settings, env, ca_file), heartbeat=settings.heartbeat,
                      timeout=settings.timeout, prefix=settings.key_prefix, instance=instance)


__all__ = ["UNAVAILABLE", "OnStateError", "SharedState", "Taken", "open_state"]
