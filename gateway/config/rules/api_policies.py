"""API rules about the policy chain: repeated policies, identify, rate limits, log files, and policies that
need another (hash on the application, identify by certificate)."""

from __future__ import annotations

import os
from pathlib import Path

from ..diagnostics import Related, error, warning
from .base import RuleContext, rule

# Policy types that make no sense twice in one chain (throttle: twice with the same `per`).
SINGLE_POLICY_TYPES = ("identify", "routing", "origin")


@rule
def policy_chains(ctx: RuleContext) -> None:
    applications = ctx.of("Application")
    registered = {api for app in applications for api in app.model.apis}
    all_checked = ctx.known.get("Application", set()) <= {a.name for a in applications}  # else: cannot tell
    for e in ctx.of("API"):
        seen: dict[tuple, int] = {}
        has_identify = False
        for i, p in enumerate(e.model.policies):
            if p.type == "identify":
                has_identify = True
            key: tuple | None = None
            if p.type in SINGLE_POLICY_TYPES:
                key = (p.type,)
            elif p.type == "throttle":
                key = (p.type, p.per)
            if key is None:
                continue
            if key in seen:
                what = f"throttle per {p.per}" if p.type == "throttle" else p.type
                ctx.out.append(
                    error(
                        "WSG123",
                        f"the chain has {what} twice",
                        e.doc.value_at(("policies", i, "type")),
                        related=(Related(e.doc.value_at(("policies", seen[key], "type")), "first one here"),),
                        hint="keep one and merge their settings",
                    )
                )
            else:
                seen[key] = i
        identify = next((p for p in e.model.policies if p.type == "identify"), None)
        if identify is not None and not identify.allow_anonymous and all_checked and e.name not in registered:
            ctx.out.append(
                warning(
                    "WSG216",
                    f"API '{e.name}' requires an identified application, but no application is registered to it",
                    e.doc.value_at(("policies", e.model.policies.index(identify), "type")),
                    hint=f"add '{e.name}' to an Application's `apis`, or set `allow_anonymous: true`: "
                    "until then every upgrade gets 401",
                )
            )
        if not has_identify:
            ctx.out.append(
                warning(
                    "WSG201",
                    f"API '{e.name}' has no identify policy: anyone can connect",
                    e.doc.key_at(("policies",)) if "policies" in e.doc.data else e.doc.value_at(("name",)),
                    hint="add `- type: identify` to `policies` (or accept that the API is public)",
                )
            )


@rule
def rate_limit_bursts(ctx: RuleContext) -> None:
    """A byte burst smaller than the API's largest message: such a message could never pass."""
    for e in ctx.of("API"):
        largest = e.model.limits.max_message_size
        for i, p in enumerate(e.model.policies):
            # Without `burst_bytes` the burst is at least one largest message (RateLimit's default).
            if p.type != "rate-limit" or largest is None or p.burst_bytes is None or p.burst_bytes >= largest:
                continue
            ctx.out.append(
                error(
                    "WSG140",
                    f"rate-limit burst_bytes {p.burst_bytes} is below one message of the API's largest size "
                    f"({largest} bytes): such a message could never pass",
                    e.doc.value_at(("policies", i, "burst_bytes")),
                    hint=f"set `burst_bytes` to at least {largest}, or lower `limits.max_message_size`",
                )
            )




@rule
def log_file_paths(ctx: RuleContext) -> None:
    """A log-invocation file stays inside the config tree or a directory the Gateway resource declares: a config
    change must not be able to write wherever the gateway process may."""
    allowed_extra: list[Path] = []
    for g in ctx.of("Gateway"):
        for d in g.model.log_directories:
            allowed_extra.append(Path(os.path.normpath(g.doc.base_dir / d)).resolve())
    roots = [r.resolve() for r in ctx.roots]
    outside: dict[tuple[Path, str], bool] = {}  # (declaring directory, file) -> escapes; resolve() costs a syscall
    for e in ctx.of("API"):
        for i, p in enumerate(e.model.policies):
            if p.type != "log-invocation" or not p.file:
                continue
            key = (e.doc.base_dir, p.file)
            if key not in outside:
                target = Path(os.path.normpath(e.doc.base_dir / p.file)).resolve()  # `..` and symlinks resolved
                mine = Path(os.path.normpath(e.doc.base_dir)).resolve()
                root = next((r for r in roots if mine.is_relative_to(r)), mine)
                outside[key] = not any(target.is_relative_to(d) for d in [root, *allowed_extra])
            if not outside[key]:
                continue
            root = next((r for r in roots if Path(e.doc.base_dir).resolve().is_relative_to(r)), e.doc.base_dir)
            what = "an absolute path" if Path(p.file).is_absolute() else f"outside the config tree {root}"
            ctx.out.append(
                error(
                    "WSG132",
                    f"log file {p.file} is {what}",
                    e.doc.value_at(("policies", i, "file")),
                    hint="write it under the config tree (e.g. `logs/api.jsonl`), or declare its directory in the "
                    "Gateway resource's `log_directories`",
                )
            )




@rule
def hash_on_application_needs_identify(ctx: RuleContext) -> None:
    """`consistent-hash` on the application of an API that identifies none: every key is missing."""
    for e in ctx.of("API"):
        types = [p.type for p in e.model.policies]
        for i, policy in enumerate(e.model.policies):
            if (policy.type == "routing" and policy.strategy == "consistent-hash" and policy.hash_on == "application"
                    and "identify" not in types):
                ctx.out.append(
                    warning(
                        "WSG214",
                        f"API '{e.name}' hashes on the application but identifies none: connections are not sticky",
                        e.doc.value_at(("policies", i, "hash_on")),
                        hint="add an identify policy, or hash on `client_ip`, a `header` or a `query` parameter",
                    )
                )


@rule
def certificate_identify_needs_mtls(ctx: RuleContext) -> None:
    """`identify: by: [certificate]` on an API none of whose ports ask clients for a certificate."""
    ports = ctx.firsts("Port")
    for e in ctx.of("API"):
        for i, policy in enumerate(e.model.policies):
            if policy.type != "identify" or "certificate" not in policy.by:
                continue
            asking = [name for name in e.model.ports if name in ports and ports[name].model.tls is not None
                      and ports[name].model.tls.client_certificates is not None]
            if not asking:
                ctx.out.append(
                    warning(
                        "WSG213",
                        f"API '{e.name}' identifies by client certificate, but none of its ports asks for one",
                        e.doc.value_at(("policies", i, "by", policy.by.index("certificate"))),
                        hint="add `tls: {client_certificates: {ca_file: ...}}` to the Port",
                    )
                )
