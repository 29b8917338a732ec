"""The one build path: check → compile without sockets → diagnostics located at the field.

``build()`` is what ``validate``, ``plan``, ``run`` and the reload call. It
runs :func:`gateway.config.check` (YAML, schema, models, rules), then builds
every artefact the runtime builds from a config, with the very functions the
runtime uses, short of opening sockets: listener TLS contexts (certificate and
key pairs, SNI certificates, client CA bundles), upstream TLS contexts (CA
bundles, client certificates), upstream endpoints, origin
patterns, JWT verifiers (key files) and log targets. An artefact that fails
becomes a diagnostic at the field that names it, so nothing that passes
``validate`` fails when ``run`` or a reload compiles it.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import CheckCache, CheckResult, check, redact, with_source_lines
from .config.diagnostics import Diagnostic, error
from .config.tree import Config

# Failures a broken artefact raises: OpenSSL, the file system, parsers.
_BUILD_ERRORS = (ssl.SSLError, OSError, ValueError, TypeError, LookupError)


def build(paths: Sequence[str | Path], *, env: Mapping[str, str] | None = None, cache: CheckCache | None = None,
          import_transforms: bool = False) -> CheckResult:
    """Check the tree under ``paths`` and compile it without sockets; the config only when both succeed."""
    result = check(paths, env=env, cache=cache, import_transforms=import_transforms)
    if result.config is None:
        return result
    # Scrubbed like check()'s own: a quoted upstream URL line may carry userinfo.
    problems = redact.scrub(with_source_lines(compile_problems(result.config, os.environ if env is None else env),
                                              result.sources), result.documents)
    if not problems:
        return result
    diagnostics = sorted(result.diagnostics + problems, key=Diagnostic.sort_key)
    config = None if any(d.is_error for d in problems) else result.config
    return CheckResult(config, diagnostics, result.files, result.sources, result.documents, result.unversioned)


def compile_problems(config: Config, env: Mapping[str, str]) -> list[Diagnostic]:
    """Build each artefact of ``config`` as the runtime would (no sockets); one diagnostic per failure."""
    from .apps import AppIndex
    from .policies.origin import origin_pattern
    from .routes import Endpoint, upstream_ssl_context
    from .tls import ServerTLS

    out: list[Diagnostic] = []
    for name, port in config.ports.items():
        if port.model.tls is None:
            continue
        try:
            ServerTLS(name, port)  # the default certificate, the SNI ones and the client CA bundle, as run loads them
        except _BUILD_ERRORS as exc:
            out.append(error("WSG170", f"port '{name}': the TLS certificates cannot be loaded: {_why(exc)}",
                             port.locate(("tls", "cert")),
                             hint="a PEM certificate chain in `cert` and its matching private key in `key`"))
    for name, api in config.apis.items():
        try:
            upstream_ssl_context(api)
        except _BUILD_ERRORS as exc:
            out.append(error("WSG171", f"API '{name}': the upstream CA file cannot be loaded: {_why(exc)}",
                             api.locate(("upstream", "tls", "ca_file")),
                             hint="a PEM bundle of the CA certificates that sign the native server's certificate"))
        for i, endpoint in enumerate(api.model.upstream.endpoints):
            try:
                Endpoint.parse(endpoint.url)
            except Exception as exc:  # websockets raises its own InvalidURI  # noqa: BLE001
                out.append(error("WSG172", f"upstream URL cannot be used: {_why(exc)}",
                                 api.locate(("upstream", "endpoints", i, "url")),
                                 hint="ws://HOST[:PORT]/PATH or wss://HOST[:PORT]/PATH"))
        for i, policy in enumerate(api.model.policies):
            if policy.type == "origin":
                for j, allowed in enumerate(policy.allow):
                    try:
                        origin_pattern(allowed)
                    except Exception as exc:  # noqa: BLE001
                        out.append(error("WSG172", f"origin pattern cannot be compiled: {_why(exc)}",
                                         api.locate(("policies", i, "allow", j)), hint="https://HOST or https://*.DOMAIN"))
            elif policy.type == "log-invocation" and policy.file:
                problem = _log_target_problem(api.resolve(policy.file))
                if problem:
                    out.append(error("WSG173", f"log file {policy.file} cannot be written: {problem}",
                                     api.locate(("policies", i, "file")),
                                     hint="the file's directory must exist and be writable by the gateway"))
    try:
        AppIndex.build(config, env)  # reads JWT key files and builds the verifiers
    except _BUILD_ERRORS as exc:
        out.append(error("WSG174", f"the applications' identifiers cannot be compiled: {_why(exc)}",
                         _first_jwt(config), hint="fix the JWT key source named here"))
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
