"""Shared state: what must hold across workers and instances (active-connection slots, message budgets).

One small interface (:class:`SharedState`, in ``base``) and two backends:
``memory`` (one process, the default) and ``redis`` (every worker and every
instance pointed at the same Redis). Importing this package loads neither
backend; :func:`open_state` picks one from the Gateway resource's ``state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .base import UNAVAILABLE, OnStateError, SharedState, Taken

if TYPE_CHECKING:
    from ..config.models import MemoryState, RedisState


def open_state(settings: MemoryState | RedisState, env: Mapping[str, str], *, ca_file: str | None = None,
               instance: str | None = None) -> SharedState:
    """The backend the settings name, not started yet (``await state.start()``)."""
    if settings.backend == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    from .redis import RedisStore, connection_options

    return RedisStore(connection_options(settings, env, ca_file), heartbeat=settings.heartbeat,
                      timeout=settings.timeout, prefix=settings.key_prefix, instance=instance)


__all__ = ["UNAVAILABLE", "OnStateError", "SharedState", "Taken", "open_state"]
