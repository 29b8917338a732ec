"""The policy registry: one class per policy type, built from its validated config.

Adding a policy is three things: a config model (gateway/config/models.py),
a class here under policies/, and one entry in ``BUILDERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..apps import AppIndex
from ..config.models import API
from ..config.tree import Config, Loaded
from .base import Policy
from .identify import Identify
from .log_invocation import LogInvocation
from .origin import Origin
from .routing import Routing
from .state import PolicyState
from .throttle import Throttle
from .transform import Transform, load_callable

Builder = Callable[[Any, Loaded[API], Config, AppIndex, PolicyState], Policy]

BUILDERS: dict[str, Builder] = {
    "identify": lambda spec, api, config, apps, state: Identify(spec, api.model.name, apps, state),
    "throttle": lambda spec, api, config, apps, state: Throttle(spec, api.model.name, state),
    "transform": lambda spec, api, config, apps, state: Transform(
        spec, api.model.name, load_callable(spec.callable, [config.root.resolve(), api.base_dir.resolve()])
    ),
    "log-invocation": lambda spec, api, config, apps, state: LogInvocation(spec, api, state),
    "routing": lambda spec, api, config, apps, state: Routing(spec),
    "origin": lambda spec, api, config, apps, state: Origin(spec),
}


def build_chain(api: Loaded[API], config: Config, apps: AppIndex, state: PolicyState) -> list[Policy]:
    """The API's policy objects, in chain order."""
    return [BUILDERS[spec.type](spec, api, config, apps, state) for spec in api.model.policies]


__all__ = ["BUILDERS", "Policy", "PolicyState", "build_chain"]
