"""The in-process backend: today's behaviour, one process, nothing to reach."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from .base import OnStateError, TokenBucket


class LocalSlots:
    """Slots taken per key in this process; ``acquire`` is all-or-nothing against the limit it is given."""

    def __init__(self) -> None:
        self.active: Counter[str] = Counter()

    def acquire(self, key: str, limit: int) -> bool:
        if self.active[key] >= limit:
            return False
        self.active[key] += 1
        return True

    def release(self, key: str) -> bool:
        """Give one back; False if none was held (a release that already happened elsewhere)."""
        count = self.active[key]
        if count <= 0:
            del self.active[key]
            return False
        if count > 1:
            self.active[key] = count - 1
        else:
            del self.active[key]
        return True


class LocalBuckets:
    def __init__(self) -> None:
        self.buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, want: int, rate_per_s: float, burst: int) -> int:
        now = time.monotonic()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(burst, now)
        return bucket.take(want, rate_per_s, burst, now)


class MemoryStore:
    backend = "memory"
    expiry_bound = 0.0

    def __init__(self) -> None:
        self.slots = LocalSlots()
        self.buckets = LocalBuckets()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.slots.active.clear()

    def acquire(self, key: str, limit: int, on_error: OnStateError = "allow") -> bool:
        return self.slots.acquire(key, limit)

    def release(self, key: str) -> None:
        self.slots.release(key)

    def take_budget(self, key: str, want: int, rate_per_s: float, burst: int,
                    on_error: OnStateError = "allow") -> int:
        return self.buckets.take(key, want, rate_per_s, burst)

    def health(self) -> dict[str, Any]:
        return {"backend": self.backend, "healthy": True}
