"""Routing: how upgrades reach the native endpoints. The route compiler reads ``strategy``."""

from __future__ import annotations

from ..config.models import RoutingPolicy
from .base import Policy, PolicyBuild


class Routing(Policy):
    type = "routing"

    def __init__(self, spec: RoutingPolicy, build: PolicyBuild) -> None:
        self.strategy = spec.strategy
