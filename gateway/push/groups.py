"""Groups joined at the upgrade: the API's ``push.groups`` rules applied to one request (no I/O).

Each rule reads one value (the identified application, a query parameter, a
header or a verified JWT claim), checks it against the rule's pattern and
names the group. A value that breaks the pattern refuses the upgrade (400),
as every other malformed field does; so does a missing one when the rule is
``required``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

from ..policies.base import ConnectionContext, Rejection, UpgradeRequest

if TYPE_CHECKING:
    from ..config.models import APIPush, GroupRule


@lru_cache(maxsize=256)
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def _value(rule: GroupRule, request: UpgradeRequest, conn: ConnectionContext) -> str | None:
    if rule.source == "application":
        return conn.application.name if conn.application is not None else None
    name = rule.name or ""
    if rule.source == "query":
        values = request.query.get(name)
        return values[0] if values else None
    if rule.source == "header":
        value = request.headers.get(name)
        return value if isinstance(value, str) else None
    claim = (conn.claims or {}).get(name)
    if isinstance(claim, bool) or not isinstance(claim, (str, int)):
        return None  # absent, or a structure: no group name
    return str(claim)


def join_at_upgrade(push: APIPush, request: UpgradeRequest, conn: ConnectionContext) -> tuple[str, ...] | Rejection:
    """The groups ``request`` joins, in rule order without repeats, or the refusal of a bad or missing value."""
    # Groups a connect-time authorizer named (identify `by: [authorizer]`) are joined as they are: the authorizer
    # is the operator's own code and already decided them.
    groups: list[str] = [group for group in conn.groups if group]
    for rule in push.groups:
        value = _value(rule, request, conn)
        where = "application" if rule.source == "application" else f"{rule.source} {rule.name!r}"
        if value is None or value == "":
            if rule.required:
                return Rejection(400, "bad_request", f"the {where} that names this connection's group is missing")
            continue
        if not _pattern(rule.pattern).fullmatch(value):
            return Rejection(400, "bad_request", f"the {where} does not match the group rule's pattern")
        group = rule.group_of(value)
        if group not in groups:
            groups.append(group)
    return tuple(groups)
