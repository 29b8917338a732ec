"""The one build path: check → compile without sockets → diagnostics located at the field.

``build()`` is what ``validate``, ``plan``, ``run`` and the reload call. It
runs :func:`gateway.config.check` (YAML, schema, models, rules), then builds
every artefact the runtime builds from a config, with the very functions the
runtime uses, short of opening sockets: listener TLS contexts (certificate and
key pairs, SNI certificates, client CA bundles), upstream TLS contexts (CA
bundles, client certificates), the compiled routes (parsed upstream endpoints,
chain and routing specs), origin patterns, JWT verifiers (key files) and log targets. An artefact that fails
becomes a diagnostic at the field that names it, so nothing that passes
``validate`` fails when ``run`` or a reload compiles it.

The artefacts (the TLS contexts, the compiled routes, the application index
with its JWT keys; origin patterns through ``gateway.build.origins``) come back
in :class:`Artefacts`, and the runtime binds those very objects to live state
(policy objects, endpoint health): a config is built once per process, not once
to check and again to serve (tests/test_reload_builds.py counts it). A
process handed a config without them (a worker of ``--workers N``: SSL
contexts do not cross processes) builds them once with :meth:`Artefacts.of`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common.http_client import client_ssl_context
from ..config import CheckCache, CheckResult, check, cut_long_quotes, redact, with_source_lines
from ..config.diagnostics import Diagnostic, error
from ..config.tree import Config

if TYPE_CHECKING:
    from .apps import AppIndex
    from .routes import CompiledRoute
    from .tls import ServerTLS

# Failures a broken artefact raises: OpenSSL, the file system, parsers.
_BUILD_ERRORS = (ssl.SSLError, OSError, ValueError, TypeError, LookupError)


@dataclass(frozen=True, eq=False)
class Artefacts:
    """What the compile step built from ``config``, for the runtime to serve with (not to build again)."""

    config: Config
    server_tls: Mapping[str, ServerTLS]  # port -> its TLS contexts (ports with `tls` only)
    upstream_tls: Mapping[str, ssl.SSLContext | None]  # API -> the client context of its wss:// endpoints
    apps: AppIndex  # the application index, with the JWT verifiers and their keys
    routes: Mapping[str, CompiledRoute]  # API -> its parsed endpoints, chain and routing specs, client context

    @classmethod
    def of(cls, config: Config, env: Mapping[str, str] | None = None) -> Artefacts:
        """Build them for a config checked elsewhere; the first failure raises (it passed ``build`` once)."""
        artefacts, problems = _compile(config, os.environ if env is None else env, raise_first=True)
        assert artefacts is not None and not problems
        return artefacts

    def for_config(self, config: Config) -> Artefacts | None:
        """Self when built from this very config object, else None (the caller builds its own)."""
        return self if self.config is config else None


@dataclass
class Built(CheckResult):
    """A :class:`CheckResult` with the artefacts compiled from its config (None when it has errors)."""

    artefacts: Artefacts | None = None


def build(paths: Sequence[str | Path], *, env: Mapping[str, str] | None = None, cache: CheckCache | None = None,
          import_transforms: bool = False, values: Sequence[str | Path] = ()) -> Built:
    """Check the tree under ``paths`` (resolved with the ``values`` files) and compile it without sockets; the
    config only when both succeed."""
    result = check(paths, env=env, cache=cache, import_transforms=import_transforms, values=values)
    fields = (result.diagnostics, result.files, result.sources, result.documents, result.unversioned,
              result.foreign, result.values)
    if result.config is None:
        return Built(None, *fields)
    artefacts, found = _compile(result.config, os.environ if env is None else env)
    # Scrubbed like check()'s own: a quoted upstream URL line may carry userinfo.
    problems = cut_long_quotes(redact.scrub(with_source_lines(found, result.sources), result.documents))
    if not problems:
        return Built(result.config, *fields, artefacts=artefacts)
    diagnostics = sorted(result.diagnostics + problems, key=Diagnostic.sort_key)
    if any(d.is_error for d in problems):
        return Built(None, diagnostics, *fields[1:])
    return Built(result.config, diagnostics, *fields[1:], artefacts=artefacts)


def _compile(config: Config, env: Mapping[str, str], *,
             raise_first: bool = False) -> tuple[Artefacts | None, list[Diagnostic]]:
    """The artefacts of ``config`` (None if one fails) and a diagnostic per failure (``raise_first``: raise it)."""
    from .apps import AppIndex
    from .origins import origin_pattern
    from .routes import CompiledRoute, Endpoint, upstream_ssl_context
    from .tls import CertificatePairError, ServerTLS

    out: list[Diagnostic] = []
    server_tls: dict[str, ServerTLS] = {}
    upstream_tls: dict[str, ssl.SSLContext | None] = {}
    routes: dict[str, CompiledRoute] = {}
    apps: AppIndex | None = None
    for name, port in config.ports.items():
        if port.model.tls is None:
            continue
        try:
            # The default certificate, the SNI ones and the client CA bundle, as the listener serves them.
            server_tls[name] = ServerTLS(name, port)
        except CertificatePairError as exc:
            if raise_first:
                raise
            out.append(error("WSG170", f"port '{name}': {exc}", port.locate(exc.at + ("cert",)),
                             hint="the key must be the private key of that certificate (its pair); check both "
                                  "paths"))
        except _BUILD_ERRORS as exc:
            if raise_first:
                raise
            out.append(error("WSG170", f"port '{name}': the TLS certificates cannot be loaded: {_why(exc)}",
                             port.locate(("tls", "cert")),
                             hint="a PEM certificate chain in `cert` and its matching private key in `key`"))
    for name, api in config.apis.items():
        try:
            upstream_tls[name] = upstream_ssl_context(api)
        except _BUILD_ERRORS as exc:
            if raise_first:
                raise
            out.append(error("WSG171", f"API '{name}': the upstream CA file cannot be loaded: {_why(exc)}",
                             api.locate(("upstream", "tls", "ca_file")),
                             hint="a PEM bundle of the CA certificates that sign the native server's certificate"))
        endpoints: list[Endpoint] = []
        for i, endpoint in enumerate(api.model.upstream.endpoints):
            try:
                endpoints.append(Endpoint.parse(endpoint.url, endpoint.weight))
            except Exception as exc:  # websockets raises its own InvalidURI  # noqa: BLE001
                if raise_first:
                    raise
                out.append(error("WSG172", f"upstream URL cannot be used: {_why(exc)}",
                                 api.locate(("upstream", "endpoints", i, "url")),
                                 hint="ws://HOST[:PORT]/PATH or wss://HOST[:PORT]/PATH"))
        if name in upstream_tls and len(endpoints) == len(api.model.upstream.endpoints):
            routes[name] = CompiledRoute.compile(api, upstream_tls[name], tuple(endpoints))
        for i, policy in enumerate(api.model.policies):
            if policy.type == "origin":
                for j, allowed in enumerate(policy.allow):
                    try:
                        origin_pattern(allowed)  # the policies of the route table get these compiled objects
                    except Exception as exc:  # noqa: BLE001
                        if raise_first:
                            raise
                        out.append(error("WSG172", f"origin pattern cannot be compiled: {_why(exc)}",
                                         api.locate(("policies", i, "allow", j)), hint="https://HOST or https://*.DOMAIN"))
            elif policy.type == "identify":
                out += _client_tls_problems(api, i, policy)
            elif raise_first:
                continue  # the log targets were checked where this config was built
            elif policy.type == "log-invocation" and policy.file:
                problem = _log_target_problem(api.resolve(policy.file))
                if problem:
                    out.append(error("WSG173", f"log file {policy.file} cannot be written: {problem}",
                                     api.locate(("policies", i, "file")),
                                     hint="the file's directory must exist and be writable by the gateway"))
    try:
        apps = AppIndex.build(config, env)  # reads JWT key files and builds the verifiers
    except _BUILD_ERRORS as exc:
        if raise_first:
            raise
        out.append(error("WSG174", f"the applications' identifiers cannot be compiled: {_why(exc)}",
                         _first_jwt(config), hint="fix the JWT key source named here"))
    if apps is None or any(d.is_error for d in out):
        return None, out
    return Artefacts(config, server_tls, upstream_tls, apps, routes), out


def _client_tls_problems(api: Any, i: int, policy: Any) -> list[Diagnostic]:
    """The authorizer's and the JWKS URL's TLS files load as the running gateway loads them (WSG171)."""
    out: list[Diagnostic] = []
    settings = policy.authorizer
    if settings is not None and (settings.ca_file or settings.cert):
        try:
            client_ssl_context(str(api.resolve(settings.ca_file)) if settings.ca_file else None,
                               str(api.resolve(settings.cert)) if settings.cert else None,
                               str(api.resolve(settings.key)) if settings.key else None)
        except _BUILD_ERRORS as exc:
            field_name = "ca_file" if settings.ca_file else "cert"
            out.append(error("WSG171", f"the authorizer's TLS files cannot be loaded: {_why(exc)}",
                             api.locate(("policies", i, "authorizer", field_name)),
                             hint="a PEM CA bundle in `ca_file`; a PEM certificate chain in `cert`, its key in `key`"))
    jwt = policy.jwt
    if jwt is not None and jwt.jwks_ca_file:
        try:
            client_ssl_context(str(api.resolve(jwt.jwks_ca_file)))
        except _BUILD_ERRORS as exc:
            out.append(error("WSG171", f"the JWKS CA file cannot be loaded: {_why(exc)}",
                             api.locate(("policies", i, "jwt", "jwks_ca_file")),
                             hint="a PEM bundle of the CA certificates that sign the JWKS server's certificate"))
    return out


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _log_target_problem(path: Path) -> str | None:
    """Why the log-invocation writer could not append to ``path`` (it creates missing directories)."""
    if path.exists():
        if not path.is_file():
            return "it is not a regular file"
        return None if os.access(path, os.W_OK) else "it is not writable"
    existing = next((p for p in path.parents if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{existing or path.parent} is not a directory"
    return None if os.access(existing, os.W_OK | os.X_OK) else f"{existing} is not writable"


def _first_jwt(config: Config) -> Any:
    for api in config.apis.values():
        for i, policy in enumerate(api.model.policies):
            if policy.type == "identify" and policy.jwt is not None:
                return api.locate(("policies", i, "jwt"))
    return None
