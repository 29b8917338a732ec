"""Plain counters of the push hub, moved into Prometheus series by ``operations.metrics`` at each scrape
(the push path takes no metric lock per message)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class PushStats:
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (api, operation, result)
    deliveries: Counter[str] = field(default_factory=Counter)  # api: messages handed to a relay
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)  # (api, action): queue overflows
    cluster_errors: Counter[str] = field(default_factory=Counter)  # operation: Redis or supervisor unreachable
    queued: int = 0  # pushed messages waiting in connection queues now
