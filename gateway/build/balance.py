"""Load-balancing orders: which endpoint a new connection tries first, and which next.

Pure functions of plain values (no sockets, no clock), so they are tested
with plain values. Every strategy returns a full order of the eligible
endpoints' indexes, not just one pick: failover walks the same order, so the
endpoint tried second is the one the strategy would have chosen had the first
been down.

Consistent hashing is rendezvous (highest random weight) hashing: each key
ranks every endpoint by a score computed from (key, endpoint); the top one
wins. Removing an endpoint moves exactly the keys it held (≈1/N of them) and
adding one takes ≈1/N of the keys from the others, with no ring to rebuild.
Weights scale the score the way Resche/Schindelhauer's weighted variant does
(``-weight / ln(u)``), so a weight-2 endpoint holds twice the keys.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence


def rendezvous_order(key: str, names: Sequence[str], weights: Sequence[int]) -> list[int]:
    """Indexes of ``names`` from the key's first choice to its last (weighted rendezvous hashing)."""
    scores = []
    for index, (name, weight) in enumerate(zip(names, weights, strict=True)):
        digest = hashlib.blake2b(f"{name}\x00{key}".encode(), digest_size=8).digest()
        # A uniform number in (0, 1): never 0 (log) and never 1 (division by log(1) == 0).
        unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)
        scores.append((-weight / math.log(unit), index))
    scores.sort(reverse=True)
    return [index for _, index in scores]


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round-robin: weights 5,1,1 give a,a,b,a,c,a,a rather than a,a,a,a,a,b,c.

    The state is a current weight per endpoint index; endpoints left out of an
    ``order`` call (unhealthy ones) neither gain nor lose credit meanwhile.
    """

    __slots__ = ("current",)

    def __init__(self, size: int) -> None:
        self.current = [0] * size

    def order(self, eligible: Sequence[int], weights: Sequence[int]) -> list[int]:
        """Advance one turn among ``eligible``; the pick first, then the others by their credit."""
        if not eligible:
            return []
        total = 0
        for index in eligible:
            self.current[index] += weights[index]
            total += weights[index]
        pick = max(eligible, key=lambda i: (self.current[i], -i))
        self.current[pick] -= total
        rest = sorted((i for i in eligible if i != pick), key=lambda i: (-self.current[i], i))
        return [pick, *rest]


def least_connections_order(eligible: Sequence[int], load: Sequence[int], weights: Sequence[int]) -> list[int]:
    """``eligible`` by open-plus-pending connections per unit of weight; ties keep list order."""
    return sorted(eligible, key=lambda i: (load[i] / weights[i], i))
