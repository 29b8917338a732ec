"""The contract every shared-state backend meets.

Two kinds of shared counts, each keyed by a string the caller builds:

- **slots** (active-connection throttles): ``acquire(key, limit)`` takes one
  slot if fewer than ``limit`` are taken, all-or-nothing and atomic against
  every other taker; ``release(key)`` gives one back. A slot belongs to this
  process: if the process dies, its slots come free by themselves (the Redis
  backend bounds how soon: :attr:`SharedState.expiry_bound`).
- **budgets** (message rate limits): ``take_budget(key, want, rate_per_s,
  burst)`` takes up to ``want`` tokens from a token bucket refilled at
  ``rate_per_s`` up to ``burst``, and says how many it got (0..want).

When the backend cannot answer (Redis unreachable), ``on_error`` decides:
``allow`` counts in this process's memory against the same limit until the
backend is back (then this process's slots are re-asserted there), ``refuse``
answers "no" meanwhile (a take answers ``UNAVAILABLE``, not ``False``).
Neither raises: a state fault never ends a connection.

``acquire`` and ``take_budget`` answer at once in memory and return an
awaitable from a remote backend (check with ``inspect.isawaitable``): the
upgrade path of a memory-backed gateway stays free of coroutines.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Literal, Protocol

OnStateError = Literal["allow", "refuse"]


class Undecided:
    """The answer of a take the backend could not decide, refused by ``on_error: refuse``: falsy as a refusal
    is, yet it says why, so that a throttle tells an outage from a full limit (body, log, metric label)."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE = Undecided()
Taken = bool | Undecided  # True: a slot is taken; False: the limit is reached; UNAVAILABLE: see Undecided


class SharedState(Protocol):
    backend: str
    expiry_bound: float  # seconds after its process dies until a slot is free again (0: dies with the process)

    async def start(self) -> None:
        """Connect (a backend that is unreachable at start still starts: it serves degraded and retries)."""

    async def close(self) -> None:
        """Give back every slot still held and disconnect."""

    def acquire(self, key: str, limit: int, on_error: OnStateError = "allow") -> Taken | Awaitable[Taken]:
        """Take one slot of ``key`` if fewer than ``limit`` are taken (the memory backend answers at once);
        ``UNAVAILABLE`` when the backend could not decide and ``on_error`` refuses."""

    def release(self, key: str) -> None:
        """Give back one slot of ``key`` (never blocks; a remote backend sends it in the background)."""

    def take_budget(self, key: str, want: int, rate_per_s: float, burst: int,
                    on_error: OnStateError = "allow") -> int | Awaitable[int]:
        """Take up to ``want`` tokens from the bucket ``key``; how many were granted (memory answers at once)."""

    def health(self) -> dict[str, Any]:
        """``{"backend": ..., "healthy": bool, ...}`` for /readyz, /metrics and the logs."""


class TokenBucket:
    """A token bucket in one process (the memory backend, and the Redis backend's fallback)."""

    __slots__ = ("tokens", "stamp")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.stamp = now

    def take(self, want: int, rate_per_s: float, burst: int, now: float) -> int:
        self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate_per_s)
        self.stamp = now
        granted = min(want, int(self.tokens))
        self.tokens -= granted
        return max(granted, 0)
