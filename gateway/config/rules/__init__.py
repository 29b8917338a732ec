"""Cross-resource rules: what no single document can show.

Each rule is a small function of the validated resources (with their source
maps) that appends diagnostics. They run on every document that passed its
schema and model, even when other documents failed, so one run reports all
problems; a reference to a resource whose own document is invalid is not
reported as unknown (its own errors say enough).

One module per resource kind (the API's rules split by concern); importing a
module registers its rules. This face only re-exports.
"""

from __future__ import annotations

from . import (  # noqa: F401 - imported for their @rule registrations
    api_jwt,
    api_messages,
    api_policies,
    api_routes,
    api_transforms,
    api_upstream,
    applications,
    authz,
    echo,
    gateway,
    ineffective,
    message_routes,
    names,
    ports,
    push,
    requirements,
)
from .api_routes import api_port_references
from .applications import application_api_references
from .base import RULES, Entry, Rule, RuleContext, run

__all__ = ["RULES", "Entry", "Rule", "RuleContext", "api_port_references", "application_api_references", "run"]
