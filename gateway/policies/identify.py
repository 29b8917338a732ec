"""Identify & authorize application: only applications registered to the API get in (else 401)."""

from __future__ import annotations

from ..apps import AppIndex
from ..config.models import IdentifyPolicy
from ..credentials import key_digest
from .base import ApplicationRef, ConnectionContext, Policy, Rejection, UpgradeRequest
from .state import PolicyState

API_KEY_NAME = "x-gateway-apikey"


def presented_keys(request: UpgradeRequest, use_header: bool) -> list[str]:
    """Every API key the client sent (query parameter, any case of its name; then the header)."""
    keys = [v for name, values in request.query.items() if name.lower() == API_KEY_NAME for v in values]
    if use_header:
        keys += request.headers.get_all(API_KEY_NAME)
    return keys


class Identify(Policy):
    type = "identify"

    def __init__(self, spec: IdentifyPolicy, api: str, apps: AppIndex, state: PolicyState) -> None:
        self.spec = spec
        self.api = api
        self.apps = apps
        self.resolver = state.resolver
        self._needs_lookup = "hostname" in spec.by

    def on_upgrade(self, request: UpgradeRequest, conn: ConnectionContext):  # type: ignore[override]
        if self._needs_lookup:
            return self._identify_with_lookup(request, conn)
        return self._decide(request, conn, None)

    async def _identify_with_lookup(self, request: UpgradeRequest, conn: ConnectionContext) -> Rejection | None:
        hostname = await self.resolver.lookup(request.peer[0], self.spec.hostname_lookup_timeout)
        return self._decide(request, conn, hostname)

    def _decide(self, request: UpgradeRequest, conn: ConnectionContext, hostname: str | None) -> Rejection | None:
        found: tuple[str, str] | None = None
        key_problem = "missing API key"
        for method in self.spec.by:
            if method == "api_key":
                keys = presented_keys(request, self.spec.api_key_header)
                if len(keys) > 1:
                    return Rejection(401, "unauthorized", "more than one API key presented")
                if keys:
                    app = self.apps.by_api_key(keys[0])
                    if app is not None:
                        found = (app, "api_key")
                        conn.metadata["key_digest"] = key_digest(keys[0])  # for revocation; never the key
                    else:
                        key_problem = "unknown API key"
            elif method == "ip":
                app = self.apps.by_ip(request.peer[0])
                found = (app, "ip") if app else None
            elif method == "hostname" and hostname:
                app = self.apps.by_hostname(hostname)
                found = (app, "hostname") if app else None
            if found:
                break
        if found is None:
            if self.spec.allow_anonymous:
                conn.application = ApplicationRef("anonymous", "anonymous")
                return None
            if self.spec.by == ["api_key"]:
                reason = key_problem
            elif "api_key" in self.spec.by:
                reason = f"no registered application identified ({key_problem})"
            else:  # keys are not an identifier here: do not tell the client one is missing
                reason = "no registered application identified"
            return Rejection(401, "unauthorized", reason)
        app, method = found
        if not self.apps.is_registered(app, self.api):
            return Rejection(401, "unauthorized", f"application {app} is not registered to API {self.api}")
        conn.application = ApplicationRef(app, method)
        return None
