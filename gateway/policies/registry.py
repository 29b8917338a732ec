"""The policy registry: one class per policy type, built from its validated config.

Adding a policy is three things: a config model (gateway/config/models.py),
a class under policies/, and one entry in ``BUILDERS``.
"""

from __future__ import annotations

from typing import Any

from ..build.apps import AppIndex
from ..config.models import API
from ..config.tree import Config, Loaded
from .base import Policy, PolicyBuild
from .identify import Identify
from .log_invocation import LogInvocation
from .origin import Origin
from .rate_limit import RateLimit
from .routing import Routing
from .state import PolicyState
from .throttle import Throttle
from .transform import Transform
from .validate_messages import ValidateMessages

# Every policy class is built the same way: ``cls(spec, build)``.
BUILDERS: dict[str, type[Any]] = {
    "identify": Identify,
    "throttle": Throttle,
    "transform": Transform,
    "log-invocation": LogInvocation,
    "routing": Routing,
    "origin": Origin,
    "rate-limit": RateLimit,
    "validate-messages": ValidateMessages,
}


def build_chain(api: Loaded[API], config: Config, apps: AppIndex, state: PolicyState) -> list[Policy]:
    """The API's policy objects, in chain order."""
    build = PolicyBuild(api=api, apps=apps, state=state, root=config.root)
    return [BUILDERS[spec.type](spec, build) for spec in api.model.policies]


def build_route_chains(api: Loaded[API], config: Config, apps: AppIndex, state: PolicyState) -> dict[str, list[Policy]]:
    """Each message route's own policy objects, by route key (the first route of a key: a second is an error)."""
    build = PolicyBuild(api=api, apps=apps, state=state, root=config.root)
    out: dict[str, list[Policy]] = {}
    for route in api.model.routes:
        out.setdefault(route.key, [BUILDERS[spec.type](spec, build) for spec in route.policies])
    return out

