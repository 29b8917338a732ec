"""Origin check: refuse upgrades from pages on other sites (cross-site WebSocket hijacking), 403."""

from __future__ import annotations

from ..build.origins import origin_pattern
from ..config.models import OriginPolicy
from .base import ConnectionContext, Policy, PolicyBuild, Rejection, UpgradeRequest


class Origin(Policy):
    type = "origin"

    def __init__(self, spec: OriginPolicy, build: PolicyBuild) -> None:
        self.spec = spec
        self.patterns = tuple(origin_pattern(a) for a in spec.allow)  # compiled by build(): the same objects

    def on_upgrade(self, request: UpgradeRequest, conn: ConnectionContext) -> Rejection | None:
        values = request.headers.get_all("Origin")
        if not values:
            return None if self.spec.allow_missing else Rejection(403, "forbidden", "an Origin header is required")
        if len(values) > 1:
            return Rejection(403, "forbidden", "more than one Origin header")
        origin = values[0].strip().rstrip("/").lower()
        if any(p.match(origin) for p in self.patterns):
            return None
        return Rejection(403, "forbidden", f"origin {origin[:200]} is not allowed")
